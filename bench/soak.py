"""Fault soak: randomized faults on a live pool of real workers, then what was lost (issue 11).

    python bench/soak.py [--minutes 20] [--seed N] [--faults a,b] [--keep-env]    (make soak)

For `--minutes`, a pool of real pika consumers (the test kit's pod runner plays the kubelet for
the kwok pods; manual acks, prefetch 4) works a queue that a bounded publisher fills at a
varying rate (quiet, trickles, steady work, bursts), every message with a unique id. Two
operator replicas with `--leader-election` scale the pool (min 0, max 6), running under a
token of the chart's ServiceAccount with the chart's namespaced RBAC, on the test kit's
FAST_BEHAVIOR (2 s polls, 2 s / 5 s cooldowns up / down, a 10 s window): many decisions a
minute, each a chance to get one wrong. Meanwhile faults, chosen
by a seeded RNG (every kind once per round, in a random order), each bounded and ending by
itself:

- rabbitmq-restart   the broker stopped (SIGTERM, by PID) and started again (testenv.sh)
- mgmt-slow          the management API held 8 s, past the operator's 5 s timeout (fault proxy)
- mgmt-500           the management API answers HTTP 500 (fault proxy)
- mgmt-no-stats      queues listed without their counts, as before statistics (fault proxy)
- apiserver-restart  the control plane stopped and started (kwokctl stop/start cluster)
- operator-kill      both replicas SIGKILLed, started again after a few seconds
- leader-kill        the leading replica SIGKILLed, started again (the standby takes over)
- pods-list-denied   120 messages published (the pool grows, then wants to shrink), then the
                     Role loses `list` on pods (an RBAC toggle): the worker look fails
- secret-rotation    a new broker user in the Secret; the old user deleted a moment later

After each fault the pool must converge again (one leader, Ready and BrokerReachable True,
the Deployment at the desired count, a worker serving per replica) within RECOVERY_BOUND.
At the end the publisher stops, the queue is drained, the pool settles, and a table says:
messages published (broker-confirmed), processed, lost (must be 0), redelivered; busy
workers terminated (a worker that got SIGTERM holding a message it had not acked, per its
own journal: must be 0 when the operator could have seen the work, that is busy for longer
than a statistics interval or on a pod it could not match, or when the worker was SIGKILLed;
a message taken after the last statistics and finished in the grace period is counted
apart); blind scale-downs (a ScaledDown decided on a sample that could
not see in-flight work: the management answer of that tick failed, timed out or had no
statistics, per the fault proxy's journal, or the status written with the scale says
BrokerReachable False, statistics pending, an incomplete sample, or workers not listed; must
be 0); the longest time without an acting leader; and the recoveries.

Everything runs in a separate environment (QS_ENV=soak, ports offset by 200), brought up here
and stopped at the end (unless --keep-env), so the shared test environment and the
reliability suite's `faults` environment are not disturbed. Loopback only; only processes
started here are stopped, by PID. Every file of the run (operator logs, the workers' journal,
the proxy's journal, status snapshots, a timeline) is kept under ~/.cache/queuescaler/out/.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import json
import os
import platform
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import yaml
from kubernetes import client, config, watch

from queuescaler_testkit.broker import BrokerAdmin
from queuescaler_testkit.env import CACHE, REPO, TestEnv, wait_until
from queuescaler_testkit.envctl import (
    bring_up_separate,
    kwokctl,
    testenv_sh,
    wait_cluster_restarted,
)
from queuescaler_testkit.faultproxy import Answered, FaultProxy, Mode
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import (
    PodRunner,
    WorkerRecord,
    tracking_worker_command,
    tracking_worker_env,
)
from queuescaler_testkit.pool import Pool
from queuescaler_testkit.publisher import delete_queue, publish_messages

ENV_NAME = "soak"
PORT_OFFSET = 200
"""The soak's own environment: ports 24643 (apiserver), 24872/24873 (AMQP/management)..."""
POOL = "worker"
LEASE = "queuescaler"
RELEASE = "soak"
MAX_REPLICAS = 6
PREFETCH = 4
WORK_SECONDS = 0.25
GRACE_SECONDS = 30
RECOVERY_BOUND = 120.0
"""A fault recovered when the pool converged within this many seconds of its end."""
DRAIN_BOUND = 600.0
SETTLE_BOUND = 240.0
SPEC: dict[str, Any] = {
    "minReplicas": 0,
    "maxReplicas": MAX_REPLICAS,
    "target": {"messagesPerReplica": 10},
    "fallback": {"afterFailures": 3},  # hold: no fallback count, never a blind shrink
}
"""Over the test kit's FAST_BEHAVIOR (2 s polls, 5 s scale-down cooldown, 10 s window)."""

SCALE_LINE = re.compile(r"(?P<scaler>\S+) scaled \S+ \S+ from (?P<old>\d+) to (?P<new>\d+): "
                        r"(?P<reason>[\w-]+)")
LEADER_GAUGE = re.compile(r"^queuescaler_leader (\S+)$", re.M)


def now() -> float:
    return time.time()


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-3]


def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def say(text: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)


# -- the publisher --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    kind: str
    rate: float
    """Messages per second (0: quiet)."""
    seconds: float


def next_phase(rng: random.Random) -> Phase:
    kind = rng.choices(["quiet", "trickle", "steady", "burst"], weights=[3, 2, 3, 2])[0]
    if kind == "quiet":
        return Phase(kind, 0.0, rng.uniform(15, 45))
    if kind == "trickle":
        return Phase(kind, rng.uniform(0.3, 2.0), rng.uniform(20, 60))
    if kind == "steady":
        return Phase(kind, rng.uniform(3, 12), rng.uniform(20, 60))
    return Phase(kind, rng.uniform(25, 50), rng.uniform(4, 12))


class Publisher(threading.Thread):
    """Publishes persistent messages with confirms at a varying rate until `deadline`.

    An id counts as published once the broker confirmed it. A publish the broker did not
    confirm (it went away mid-publish) is counted apart: it may or may not be on the queue.
    """

    def __init__(self, amqp_url: str, queue: str, rng: random.Random, prefix: str,
                 max_messages: int) -> None:
        super().__init__(name="publisher", daemon=True)
        self.amqp_url = amqp_url
        self.queue = queue
        self.rng = rng
        self.prefix = prefix
        self.max_messages = max_messages
        self.deadline = 0.0
        self.confirmed: dict[str, float] = {}
        self.unconfirmed: list[str] = []
        self.phases: list[tuple[float, Phase]] = []
        self.outages = 0
        self.stop_event = threading.Event()
        self._sequence = 0
        self._injected = 0
        self._connection: Any = None
        self._channel: Any = None

    def inject(self, count: int) -> None:
        """A burst of `count` confirmed messages at once, on a connection of its own."""
        self._injected += 1
        ids = publish_messages(self.amqp_url, self.queue, count,
                               prefix=f"{self.prefix}-x{self._injected}")
        at = now()
        for message_id in ids:
            self.confirmed[message_id] = at

    @property
    def phase(self) -> Phase | None:
        return self.phases[-1][1] if self.phases else None

    def _connect(self) -> None:
        parameters = pika.URLParameters(self.amqp_url)
        parameters.socket_timeout = 5
        parameters.blocked_connection_timeout = 10
        parameters.connection_attempts = 1
        parameters.client_properties = {"connection_name": "soak-publisher"}
        self._connection = pika.BlockingConnection(parameters)
        self._channel = self._connection.channel()
        self._channel.queue_declare(queue=self.queue, durable=True)
        self._channel.confirm_delivery()

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
        self._connection = self._channel = None

    def _publish_one(self) -> None:
        if self._channel is None:
            try:
                self._connect()
            except (pika.exceptions.AMQPError, OSError):
                self.outages += 1
                self._close()
                self.stop_event.wait(1.0)
                return
        message_id = f"{self.prefix}-{self._sequence:07d}"
        self._sequence += 1
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, message_id=message_id,
            headers={"message-id": message_id},
        )
        try:
            self._channel.basic_publish("", self.queue, message_id.encode(), properties,
                                        mandatory=True)
            self.confirmed[message_id] = now()
        except (pika.exceptions.AMQPError, OSError):
            self.unconfirmed.append(message_id)  # it may or may not be on the queue
            self.outages += 1
            self._close()
            self.stop_event.wait(1.0)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set() and now() < self.deadline:
                phase = next_phase(self.rng)
                self.phases.append((now(), phase))
                ends = min(now() + phase.seconds, self.deadline)
                if phase.rate <= 0:
                    self.stop_event.wait(max(0.0, ends - now()))
                    continue
                due = now()
                while now() < ends and not self.stop_event.is_set():
                    if self._sequence >= self.max_messages:
                        self.stop_event.wait(max(0.0, ends - now()))
                        break
                    self._publish_one()
                    due += 1.0 / phase.rate
                    delay = due - now()
                    if delay > 0:
                        self.stop_event.wait(delay)
                    elif delay < -5:
                        due = now()  # fell behind (an outage): do not catch up in one flood
        finally:
            self.phases.append((now(), Phase("stopped", 0.0, 0.0)))
            self._close()


# -- watching: leaders, the QueueScaler's status --------------------------------------------------


def leads(process: OperatorProcess) -> bool | None:
    """The replica's own `queuescaler_leader`; None when it could not be read."""
    if process.process is None or process.process.poll() is not None:
        return False
    try:
        match = LEADER_GAUGE.search(process.metrics(timeout=1.0))
    except OSError:
        return None
    return bool(match and float(match.group(1)) == 1.0)


class LeaderMonitor(threading.Thread):
    """Polls each replica's leader gauge; keeps the intervals with no (or two) leaders."""

    def __init__(self, replicas: list[OperatorProcess]) -> None:
        super().__init__(name="leaders", daemon=True)
        self.replicas = replicas
        self.known: dict[int, bool] = {}
        self.current: list[int] = []
        self.no_leader_since: float | None = None
        self.gaps: list[tuple[float, float]] = []
        self.two_leaders_seconds = 0.0
        self.doubles: list[tuple[float, float]] = []
        """Intervals where two replicas said they lead (their gauges read one after the other)."""
        self._double_since: float | None = None
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        last = now()
        while not self.stop_event.wait(0.25):
            states = []
            for index, replica in enumerate(self.replicas):
                state = leads(replica)
                if state is None:
                    state = self.known.get(index, False)  # alive but slow: keep the last known
                self.known[index] = state
                states.append(state)
            at = now()
            with self.lock:
                self.current = [i for i, s in enumerate(states) if s]
                if len(self.current) >= 2:
                    self.two_leaders_seconds += at - last
                    if self._double_since is None:
                        self._double_since = at
                elif self._double_since is not None:
                    self.doubles.append((self._double_since, at))
                    self._double_since = None
                if not self.current and self.no_leader_since is None:
                    self.no_leader_since = at
                elif self.current and self.no_leader_since is not None:
                    self.gaps.append((self.no_leader_since, at))
                    self.no_leader_since = None
            last = at

    def leader(self) -> int | None:
        with self.lock:
            return self.current[0] if len(self.current) == 1 else None

    def close(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)
        with self.lock:
            if self.no_leader_since is not None:
                self.gaps.append((self.no_leader_since, now()))
                self.no_leader_since = None


class StatusWatch(threading.Thread):
    """Every status the operator wrote to the QueueScaler, as the watch delivers it."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str) -> None:
        super().__init__(name="status-watch", daemon=True)
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.custom = client.CustomObjectsApi(self.api)
        self.namespace = namespace
        self.name = name
        self.snapshots: list[tuple[float, dict[str, Any]]] = []
        self.stop_event = threading.Event()

    def _record(self, body: dict[str, Any]) -> None:
        status = body.get("status") or {}
        if not self.snapshots or self.snapshots[-1][1] != status:
            self.snapshots.append((now(), copy.deepcopy(status)))

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                listed = self.custom.list_namespaced_custom_object(
                    "queuescaler.io", "v1alpha1", self.namespace, "queuescalers",
                    field_selector=f"metadata.name={self.name}", _request_timeout=10)
                for item in listed.get("items", []):
                    self._record(item)
                version = listed["metadata"]["resourceVersion"]
                stream = watch.Watch()
                for event in stream.stream(
                    self.custom.list_namespaced_custom_object, "queuescaler.io", "v1alpha1",
                    self.namespace, "queuescalers", field_selector=f"metadata.name={self.name}",
                    resource_version=version, timeout_seconds=20, _request_timeout=30,
                ):
                    if self.stop_event.is_set():
                        stream.stop()
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(event["object"])
            except Exception:  # the apiserver restarting, a 410: list again
                self.stop_event.wait(1.0)

    def latest(self) -> dict[str, Any]:
        return self.snapshots[-1][1] if self.snapshots else {}

    def close(self) -> None:
        self.stop_event.set()
        self.join(timeout=35)
        self.api.close()


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for found in status.get("conditions") or ():
        if found.get("type") == kind:
            return dict(found)
    return {}


# -- the soak -------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    started: float
    ended: float = 0.0
    detail: str = ""
    restored: float = 0.0
    """When what the fault broke was back (the broker answering, the apiserver up...)."""
    recovered_after: float | None = None
    """Seconds from `restored` to a converged pool; None: not within the bound."""
    skipped: str | None = None
    seen: list[str] = field(default_factory=list)
    """What the operator said while it lasted (conditions, refusals): the fault bit."""


@dataclass
class Soak:
    env: TestEnv
    out: Path
    seed: int
    minutes: float
    max_messages: int
    namespace: str = field(default_factory=lambda: f"soak-{uuid.uuid4().hex[:6]}")
    queue: str = field(default_factory=lambda: f"soak-{uuid.uuid4().hex[:8]}")
    faults: list[Fault] = field(default_factory=list)
    replicas: list[OperatorProcess] = field(default_factory=list)
    broker_users: list[tuple[str, str]] = field(default_factory=list)
    """(name, password) of the operator's broker users, the current one last."""
    role: dict[str, Any] = field(default_factory=dict)
    timeline: list[list[Any]] = field(default_factory=list)
    kinds: tuple[str, ...] = ()
    """The fault kinds to draw from (all of KINDS by default)."""

    def __post_init__(self) -> None:
        self.admin = BrokerAdmin(self.env.management_url, timeout=10)
        self.api = config.new_client_from_config(config_file=str(self.env.kubeconfig))
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        management = urllib.parse.urlsplit(self.env.management_url)
        self.amqp_port = urllib.parse.urlsplit(self.env.amqp_url).port or 0
        self.proxy = FaultProxy("127.0.0.1", management.port or 0, delay=8.0)
        self.pool = Pool(self.env, self.namespace, name=POOL, queue=self.queue,
                         grace_seconds=GRACE_SECONDS)
        self.journal = self.out / "workers.journal"
        self.fault_rng = random.Random(f"{self.seed}-faults")
        self.publisher = Publisher(self.env.amqp_url, self.queue,
                                   random.Random(f"{self.seed}-traffic"),
                                   f"s{self.seed}-{uuid.uuid4().hex[:4]}", self.max_messages)
        self.runner: PodRunner | None = None
        self.leaders: LeaderMonitor | None = None
        self.statuses: StatusWatch | None = None
        self.active: str = ""
        self.replica_lock = threading.Lock()
        self.held_down: set[int] = set()
        """Replicas a fault keeps down on purpose: the supervisor leaves them alone."""
        self.exits: list[dict[str, Any]] = []
        """Replicas that exited unasked, restarted by the supervisor (as a kubelet would)."""
        self.drain_seconds: float | None = None
        self.settle_seconds: float | None = None

    # -- set-up ------------------------------------------------------------------------------------

    def broker_user(self) -> tuple[str, str]:
        name = f"soak-op-{len(self.broker_users)}-{uuid.uuid4().hex[:4]}"
        password = secrets.token_urlsafe(18)
        self.admin.add_user(name, password, tags="monitoring")
        self.admin.grant(self.env.vhost, name)
        self.broker_users.append((name, password))
        return name, password

    def write_secret(self, user: tuple[str, str]) -> None:
        name, password = (urllib.parse.quote(part, safe="") for part in user)
        vhost = urllib.parse.quote(self.env.vhost, safe="")
        self.pool.apply_secret(
            amqp_url=f"amqp://{name}:{password}@127.0.0.1:{self.amqp_port}/{vhost}",
            management_url=f"http://{name}:{password}@127.0.0.1:{self.proxy.port}",
        )

    def install_rbac(self) -> Path:
        """The chart's ServiceAccount and namespaced RBAC (as committed, not as being edited),
        and a kubeconfig holding a token of that ServiceAccount."""
        chart_dir = Path(tempfile.mkdtemp(prefix="soak-chart-"))
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD", "charts/queuescaler"],
                                 capture_output=True, check=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(chart_dir)], input=archive, check=True,
                       timeout=60)
        rendered = subprocess.run(
            [str(self.env.bin / "helm"), "template", RELEASE,
             str(chart_dir / "charts" / "queuescaler"), "--namespace", self.namespace,
             "--set", f"watchNamespaces={{{self.namespace}}}",
             "--set", "leaderElection.enabled=true", "--set", f"leaderElection.leaseName={LEASE}",
             "--set", "replicaCount=0",
             "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
        account = ""
        for document in yaml.safe_load_all(rendered):
            if not document:
                continue
            if document["kind"] == "ServiceAccount":
                account = document["metadata"]["name"]
            rules = document.get("rules") or []
            if document["kind"] == "Role" and any("pods" in r.get("resources", []) for r in rules):
                self.role = document
            self.apply(document)
        assert account and self.role, "the chart rendered no ServiceAccount or pods Role"
        return self.env.service_account_kubeconfig(
            account, self.namespace, self.out / "operator.kubeconfig", duration="4h",
            default_namespace=self.namespace,
        )

    def apply(self, manifest: dict[str, Any]) -> None:
        self.env.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=soak",
                         "-n", self.namespace, "-f", "-", input=yaml.safe_dump(manifest))

    def set_up(self) -> None:
        self.env.kubectl("create", "namespace", self.namespace)
        kubeconfig = self.install_rbac()
        self.proxy.start()
        self.pool.create()
        self.write_secret(self.broker_user())
        self.runner = PodRunner(
            self.env.kubeconfig, self.namespace, f"app={POOL}", tracking_worker_command,
            tracking_worker_env(self.env.amqp_url, self.queue, self.journal, prefetch=PREFETCH,
                                work_seconds=WORK_SECONDS),
            self.out / "workers",
        ).start()
        operator_env = dataclasses.replace(self.env, kubeconfig=kubeconfig)
        args = ("-n", self.namespace, "--leader-election", "--leader-election-namespace",
                self.namespace, "--leader-election-name", LEASE)
        for index in range(2):
            self.replicas.append(
                OperatorProcess(operator_env, self.out / f"operator-{index}.log", *args).start())
        self.leaders = LeaderMonitor(self.replicas)
        self.leaders.start()
        self.pool.apply_scaler(**SPEC)
        self.statuses = StatusWatch(self.env.kubeconfig, self.namespace, POOL)
        self.statuses.start()
        wait_until(lambda: self.leaders is not None and self.leaders.leader() is not None,
                   timeout=60, what="one operator replica to lead")

    # -- what the pool looks like ----------------------------------------------------------------

    def replicas_now(self) -> tuple[int, int]:
        """The Deployment's (spec, ready) replica counts."""
        found = self.apps.read_namespaced_deployment(POOL, self.namespace, _request_timeout=5)
        return int(found.spec.replicas or 0), int(found.status.ready_replicas or 0)

    def converged(self) -> bool:
        assert self.leaders is not None and self.runner is not None
        if self.leaders.leader() is None:
            return False
        scaler = self.pool.scaler()
        status = scaler.get("status") or {}
        if condition(status, "Ready").get("status") != "True":
            return False
        if condition(status, "BrokerReachable").get("status") != "True":
            return False
        spec, _ = self.replicas_now()
        return bool(status.get("desiredReplicas") == spec == status.get("currentReplicas")
                    and len(self.runner.serving()) == spec)

    def start_replica(self, index: int) -> bool:
        """Start (again) one replica; a failed start is recorded and retried by `revive`."""
        try:
            self.replicas[index].start()
            return True
        except AssertionError as error:
            self.exits.append({"at": iso(now()), "replica": index, "start_failed": True,
                               "why": str(error)[-300:]})
            return False

    def revive(self) -> None:
        """Restart replicas that exited unasked, as a kubelet restarts a crashed container."""
        with self.replica_lock:
            for index, replica in enumerate(self.replicas):
                process = replica.process
                if index in self.held_down or process is None or process.poll() is None:
                    continue
                lines = [line for line in replica.log().splitlines()[-40:]
                         if '"severity": "error"' in line and "Request attempt" not in line]
                self.exits.append({"at": iso(now()), "replica": index,
                                   "exit_code": process.returncode,
                                   "last_error": lines[-1][:300] if lines else ""})
                say(f"   replica {index} exited ({process.returncode}) unasked: restarting it")
                self.start_replica(index)

    def supervise(self, stop: threading.Event) -> None:
        while not stop.wait(2.0):
            self.revive()

    def wait_converged(self, bound: float) -> float | None:
        started = time.monotonic()
        deadline = started + bound
        while time.monotonic() < deadline:
            try:
                if self.converged():
                    return time.monotonic() - started
            except Exception:  # the apiserver settling: keep polling
                pass
            time.sleep(1.0)
        return None

    def sample_timeline(self, stop: threading.Event) -> None:
        while not stop.wait(2.0):
            try:
                spec, ready = self.replicas_now()
            except Exception:
                spec = ready = -1
            status = self.statuses.latest() if self.statuses else {}
            phase = self.publisher.phase
            leader = self.leaders.leader() if self.leaders else None
            self.timeline.append([
                round(now(), 1), spec, ready,
                len(self.runner.serving()) if self.runner else 0,
                (status.get("backlog") or {}).get("total"), status.get("desiredReplicas"),
                (status.get("lastDecision") or {}).get("reason"),
                condition(status, "BrokerReachable").get("status"),
                leader, phase.kind if phase else "", round(phase.rate, 1) if phase else 0,
                self.active,
            ])

    # -- faults ------------------------------------------------------------------------------------

    def hold(self, seconds: float) -> None:
        time.sleep(seconds)

    def fault_rabbitmq_restart(self, fault: Fault) -> None:
        down = self.fault_rng.uniform(5, 25)
        fault.detail = f"down {down:.0f} s"
        testenv_sh(ENV_NAME, "down", "rabbitmq", port_offset=PORT_OFFSET)
        try:
            self.hold(down)
        finally:
            testenv_sh(ENV_NAME, "up", "rabbitmq", port_offset=PORT_OFFSET)
            fault.restored = now()  # the management API answers again

    def _proxy_fault(self, fault: Fault, mode: Mode, low: float, high: float) -> None:
        seconds = self.fault_rng.uniform(low, high)
        fault.detail = f"{mode.value} for {seconds:.0f} s"
        self.proxy.mode = mode
        try:
            self.hold(seconds)
        finally:
            self.proxy.mode = Mode.PASS
            fault.restored = now()

    def fault_mgmt_slow(self, fault: Fault) -> None:
        self._proxy_fault(fault, Mode.SLOW, 15, 40)

    def fault_mgmt_500(self, fault: Fault) -> None:
        self._proxy_fault(fault, Mode.ERROR, 10, 30)

    def fault_mgmt_no_stats(self, fault: Fault) -> None:
        self._proxy_fault(fault, Mode.NO_STATS, 10, 30)

    def fault_apiserver_restart(self, fault: Fault) -> None:
        down = self.fault_rng.uniform(5, 20)
        fault.detail = f"down {down:.0f} s"
        kwokctl(self.env, ENV_NAME, "stop", "cluster")
        try:
            self.hold(down)
        finally:
            kwokctl(self.env, ENV_NAME, "start", "cluster")
            fault.restored = now()
            wait_cluster_restarted(self.env)

    def fault_operator_kill(self, fault: Fault) -> None:
        down = self.fault_rng.uniform(2, 10)
        fault.detail = f"both replicas SIGKILLed, started {down:.0f} s later"
        with self.replica_lock:
            self.held_down = set(range(len(self.replicas)))
            for replica in self.replicas:
                replica.stop(kill=True)
        try:
            self.hold(down)
        finally:
            with self.replica_lock:
                for index in range(len(self.replicas)):
                    self.start_replica(index)
                self.held_down = set()
            fault.restored = now()

    def fault_leader_kill(self, fault: Fault) -> None:
        leaders = self.leaders
        assert leaders is not None
        try:
            wait_until(lambda: leaders.leader() is not None, timeout=30, what="a leader to kill")
        except AssertionError:
            fault.skipped = "no single leader within 30 s"
            return
        index = leaders.leader()
        if index is None:
            fault.skipped = "the leader changed while it was looked for"
            return
        after = self.fault_rng.uniform(0, 20)
        fault.detail = f"replica {index} (leader) SIGKILLed, started again {after:.0f} s later"
        with self.replica_lock:
            self.held_down = {index}
            self.replicas[index].stop(kill=True)
        try:
            self.hold(after)
        finally:
            with self.replica_lock:
                self.start_replica(index)
                self.held_down = set()
            fault.restored = now()

    def fault_pods_list_denied(self, fault: Fault) -> None:
        seconds = self.fault_rng.uniform(20, 50)
        fault.detail = f"120 messages, then a Role without pods/list for {seconds:.0f} s"
        # The operator lists pods only on ticks that may scale down: a burst grows the pool,
        # which wants to shrink again (and must look at its workers) while the denial lasts.
        self.publisher.inject(120)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: self.replicas_now()[0] >= 2, timeout=60, what="a grown pool")
        denied = copy.deepcopy(self.role)
        for rule in denied["rules"]:
            if "pods" in rule.get("resources", []):
                rule["verbs"] = [v for v in rule["verbs"] if v != "list"]
        self.apply(denied)
        try:
            self.hold(seconds)
        finally:
            self.apply(self.role)
            fault.restored = now()

    def fault_secret_rotation(self, fault: Fault) -> None:
        old = self.broker_users[-1]
        new = self.broker_user()
        moment = self.fault_rng.uniform(2, 10)
        fault.detail = f"Secret names {new[0]}; {old[0]} deleted {moment:.0f} s later"
        self.write_secret(new)
        self.hold(moment)
        self.admin.delete_user(old[0], missing_ok=True)
        fault.restored = now()

    KINDS: tuple[str, ...] = (
        "rabbitmq-restart", "mgmt-slow", "mgmt-500", "mgmt-no-stats", "apiserver-restart",
        "operator-kill", "leader-kill", "pods-list-denied", "secret-rotation",
    )

    def run_faults(self, deadline: float) -> None:
        bag: list[str] = []
        kinds = [k for k in self.KINDS if k in self.kinds]
        self.hold(self.fault_rng.uniform(20, 40))  # the pool at work before the first fault
        while now() < deadline - 30:
            if not bag:
                bag = list(kinds)
                self.fault_rng.shuffle(bag)
            kind = bag.pop()
            fault = Fault(kind, now())
            self.active = kind
            say(f"fault {len(self.faults) + 1}: {kind}")
            act: Callable[[Fault], None] = getattr(self, "fault_" + kind.replace("-", "_"))
            try:
                act(fault)
            finally:
                fault.ended = now()
                fault.restored = fault.restored or fault.ended
                self.active = ""
                self.faults.append(fault)
            if fault.skipped:
                say(f"   skipped: {fault.skipped}")
                continue
            waited = self.wait_converged(RECOVERY_BOUND - (fault.ended - fault.restored))
            if waited is not None:
                fault.recovered_after = fault.ended - fault.restored + waited
            recovered = ("not converged within "
                         f"{RECOVERY_BOUND:.0f} s" if fault.recovered_after is None
                         else f"converged {fault.recovered_after:.1f} s after")
            say(f"   {fault.detail}; {recovered}")
            self.hold(self.fault_rng.uniform(5, 20))

    # -- the run -----------------------------------------------------------------------------------

    def run(self) -> None:
        stop_timeline = threading.Event()
        sampler = threading.Thread(target=self.sample_timeline, args=(stop_timeline,),
                                   daemon=True)
        sampler.start()
        supervisor = threading.Thread(target=self.supervise, args=(stop_timeline,), daemon=True)
        supervisor.start()
        deadline = now() + self.minutes * 60
        self.publisher.deadline = deadline
        self.publisher.start()
        try:
            self.run_faults(deadline)
            while now() < deadline:
                time.sleep(1.0)
            self.publisher.stop_event.set()
            self.publisher.join(timeout=30)
            say(f"published {len(self.publisher.confirmed)} (confirmed); draining")
            started = time.monotonic()
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not self.missing(), timeout=DRAIN_BOUND,
                           what="every message processed", every=2.0)
                self.drain_seconds = time.monotonic() - started
            say(f"drained: {len(self.missing())} missing; letting the pool settle")
            started = time.monotonic()
            with contextlib.suppress(AssertionError):
                wait_until(lambda: self.replicas_now()[0] == 0 and self.runner is not None
                           and not self.runner.running(), timeout=SETTLE_BOUND,
                           what="the pool at zero", every=2.0)
                self.settle_seconds = time.monotonic() - started
        finally:
            self.publisher.stop_event.set()
            stop_timeline.set()
            sampler.join(timeout=10)
            supervisor.join(timeout=90)

    def missing(self) -> list[str]:
        done = {r.message_id for r in read_journal(self.journal).done}
        return [m for m in self.publisher.confirmed if m not in done]

    # -- tear-down ---------------------------------------------------------------------------------

    def restore(self) -> None:
        """Whatever a fault interrupted by an error (or Ctrl-C) left behind, put back."""
        self.proxy.mode = Mode.PASS
        with contextlib.suppress(Exception):
            testenv_sh(ENV_NAME, "up", "rabbitmq", port_offset=PORT_OFFSET)
        if self.env.kubectl("get", "--raw", "/readyz", check=False).returncode != 0:
            with contextlib.suppress(Exception):
                kwokctl(self.env, ENV_NAME, "start", "cluster")
                wait_cluster_restarted(self.env)
        if self.role:
            with contextlib.suppress(Exception):
                self.apply(self.role)

    def tear_down(self) -> None:
        if self.leaders is not None:
            self.leaders.close()  # before the replicas stop: a stopping one hands over
        if self.statuses is not None:
            self.statuses.close()
        if self.runner is not None:
            self.runner.stop()
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                replica.stop()
        self.proxy.close()

    def clean_up(self) -> None:
        with contextlib.suppress(Exception):
            delete_queue(self.env.amqp_url, self.queue)
        for name, _ in self.broker_users:
            with contextlib.suppress(Exception):
                self.admin.delete_user(name, missing_ok=True)
        self.env.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
        self.api.close()


# -- reading what happened ------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    message_id: str
    pod: str
    redelivered: bool
    started: float
    acked: float


@dataclass(frozen=True)
class Stopped:
    pod: str
    at: float
    in_hand: bool
    waiting: int
    last_delivery: float | None


@dataclass
class Journal:
    done: list[Done] = field(default_factory=list)
    stopped: dict[str, Stopped] = field(default_factory=dict)
    requeued: dict[str, int] = field(default_factory=dict)
    connection_failures: int = 0
    """Connections lost, and reconnection attempts that failed (a broker restart)."""


def read_journal(path: Path) -> Journal:
    found = Journal()
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        fields = line.split()
        if not fields:
            continue
        kind = fields[0]
        try:
            if kind == "done":
                found.done.append(Done(fields[1], fields[2], fields[3] == "1", float(fields[4]),
                                       float(fields[5])))
            elif kind == "sigterm":
                found.stopped[fields[1]] = Stopped(
                    fields[1], float(fields[2]), fields[3] == "1", int(fields[4]),
                    None if fields[5] == "-" else float(fields[5]))
            elif kind == "exit":
                found.requeued[fields[1]] = int(fields[3])
            elif kind == "connection" and fields[3] == "lost":
                found.connection_failures += 1
        except (IndexError, ValueError):
            continue  # a line cut short by a SIGKILL
    return found


@dataclass(frozen=True)
class Scale:
    at: float
    replica: int
    old: int
    new: int
    reason: str
    message: str


def scales(logs: list[Path], scaler: str) -> list[Scale]:
    """Every scale the operator replicas logged (the JSON log: one object per line)."""
    found: list[Scale] = []
    for index, path in enumerate(logs):
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if " scaled " not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = str(entry.get("message", ""))
            match = SCALE_LINE.search(message)
            if not match or match["scaler"] != scaler:
                continue
            found.append(Scale(parse_time(entry["timestamp"]), index, int(match["old"]),
                               int(match["new"]), match["reason"], message))
    return sorted(found, key=lambda s: s.at)


BLIND_NOTES = ("statistics are not out", "cannot see every message")


def blind_reasons(scale: Scale, answers: list[Answered],
                  snapshots: list[tuple[float, dict[str, Any]]]) -> list[str]:
    """Why this scale-down was decided without in-flight knowledge (empty: it was not)."""
    reasons: list[str] = []
    # The journal is in the order of the answers: the tick's listing is the last request to
    # arrive before the scale. A held (slow) one is forwarded when released, so a 200 that
    # came before the scale is a fresh, complete answer; one still held at the scale was not
    # what the decision saw.
    listings = sorted((a for a in answers
                       if a.path.startswith("/api/queues") and a.arrived <= scale.at),
                      key=lambda a: a.arrived)
    if listings:
        last = listings[-1]
        if last.mode in (Mode.ERROR, Mode.GARBAGE, Mode.NO_STATS) or last.status != 200 \
                or last.answered > scale.at:
            reasons.append(f"the tick's queue listing ({iso(last.arrived)}) was answered "
                           f"{last.status} in mode {last.mode.value} at {iso(last.answered)}")
    # The status written with the scale: the first one after it showing the new count.
    after = [s for t, s in snapshots
             if scale.at - 1 <= t <= scale.at + 10 and s.get("currentReplicas") == scale.new]
    if after:
        status = after[0]
        reachable = condition(status, "BrokerReachable")
        ready = condition(status, "Ready")
        workers = condition(status, "WorkersMatched")
        if reachable.get("status") == "False":
            reasons.append(f"status: BrokerReachable False ({reachable.get('reason')})")
        if any(note in str(ready.get("message", "")) for note in BLIND_NOTES):
            reasons.append(f"status: Ready says {ready.get('message')!r}")
        if workers.get("reason") == "NotListed":
            reasons.append(f"status: WorkersMatched NotListed ({workers.get('message')})")
    return reasons


def what_the_operator_said(fault: Fault, snapshots: list[tuple[float, dict[str, Any]]],
                           gaps: list[tuple[float, float]], until: float) -> list[str]:
    """What the status said while the fault lasted (and 10 s after, but not past `until`,
    the next fault's start): proof that it bit."""
    begin, end = fault.started, min(fault.restored + 10, until)
    said: set[str] = set()
    for at, status in snapshots:
        if not begin <= at <= end:
            continue
        for kind in ("BrokerReachable", "WorkersMatched", "TargetFound"):
            found = condition(status, kind)
            if found.get("status") == "False":
                said.add(f"{kind} False {found.get('reason')}")
        reason = (status.get("lastDecision") or {}).get("reason")
        if reason in ("no-data", "incomplete-sample", "busy-workers", "fallback"):
            said.add(f"held: {reason}")
    for start, stop in gaps:
        if start < end and stop > begin:
            said.add(f"no leader {stop - start:.0f} s")
    return sorted(said)


STATS_INTERVAL = 5.0
"""RabbitMQ's statistics interval (collect_statistics_interval, default 5 s): how stale the
channels' unacknowledged counts may be when the operator reads them."""


def busy_since(done: list[Done], pod: str, at: float) -> float | None:
    """When the pod's run of back-to-back messages that was going on at `at` began (None:
    idle at `at`). Messages less than 0.1 s apart (ack to next start) count as one run."""
    mine = sorted((d for d in done if d.pod == pod and d.started <= at), key=lambda d: d.started)
    if not mine or mine[-1].acked <= at:
        return None
    since = mine[-1].started
    for earlier in reversed(mine[:-1]):
        if since - earlier.acked > 0.1:
            break
        since = earlier.started
    return since


def busy_class(held_at_decision: bool, busy_for: float | None,
               workers: dict[str, Any] | None) -> str:
    """Why a worker stopped with messages in hand: whose fault it was."""
    if not held_at_decision:
        return "after-decision"  # idle when the scale-down was decided; work arrived after
    if workers and int(workers.get("unmatched") or 0) > 0:
        return "unmatched"  # pods the broker could not place were not protected
    if busy_for is not None and busy_for > STATS_INTERVAL + 1:
        return "known-busy"  # busy long enough for the statistics to show it
    return "stats-lag"  # busy only since the broker's last statistics


BUSY_CLASSES = {
    "unmatched": "pods not matched to a consumer were not protected (operator)",
    "known-busy": "busy for longer than a statistics interval before the decision (operator)",
    "stats-lag": "became busy within the statistics interval before the decision (stats lag)",
    "after-decision": "idle at the decision, got a message before its SIGTERM (race)",
}
OPERATOR_FAULTS = frozenset({"unmatched", "known-busy"})
"""Classes the operator could have prevented. The others are the race no broker statistics
close: a worker the last statistics showed idle takes a message between that look and its
SIGTERM. Graceful shutdown is what protects that message, so it counts only if the worker
was SIGKILLed (it did not finish in its grace period) or lost it."""


def operator_faults(busy: list[dict[str, Any]]) -> int:
    """Busy workers stopped with work the operator could see, or with their work cut off."""
    return sum(1 for b in busy if b["class"] in OPERATOR_FAULTS or b["killed"])


def busy_at(done: list[Done], pod: str, at: float) -> list[str]:
    """The messages `pod` had in hand at `at` (started before, acked after), per its journal."""
    return [d.message_id for d in done if d.pod == pod and d.started <= at < d.acked]


# -- the report -----------------------------------------------------------------------------------


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 2**20:.0f} GB"
    return (f"{os.cpu_count()} vCPU {cpu}, {memory} RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def report(soak: Soak, started: float) -> dict[str, Any]:
    assert soak.runner is not None and soak.leaders is not None and soak.statuses is not None
    journal = read_journal(soak.journal)
    confirmed = soak.publisher.confirmed
    processed_ids = Counter(d.message_id for d in journal.done)
    lost = [m for m in confirmed if m not in processed_ids]
    unconfirmed_done = sum(1 for m in soak.publisher.unconfirmed if m in processed_ids)
    redelivered = sum(1 for d in journal.done if d.redelivered)
    twice = sum(1 for m in confirmed if processed_ids.get(m, 0) > 1)

    records: dict[str, WorkerRecord] = soak.runner.records()
    logs = [r.log_path for r in soak.replicas]
    all_scales = scales(logs, f"{soak.namespace}/{POOL}")
    downs = [s for s in all_scales if s.new < s.old]
    terminated = [r for r in records.values()
                  if r.sigterm_at is not None and r.stop_reason != "runner-stopped"]
    busy: list[dict[str, Any]] = []
    unjournalled = []
    for record in terminated:
        stop = journal.stopped.get(record.pod)
        if stop is None:  # it never said what it held (it had exited, or could not write)
            unjournalled.append(record.pod)
            continue
        if not (stop.in_hand or stop.waiting or record.killed):
            continue
        before = [s for s in downs if s.at <= (record.sigterm_at or 0)]
        scale = before[-1] if before else None
        at_decision = busy_at(journal.done, record.pod, scale.at) if scale else []
        status = [st for t, st in soak.statuses.snapshots if scale and t >= scale.at - 1
                  and st.get("currentReplicas") == scale.new][:1]
        since = busy_since(journal.done, record.pod, scale.at) if scale else None
        busy_for = None if since is None or scale is None else scale.at - since
        workers = status[0].get("workers") if status else None
        busy.append({
            "pod": record.pod, "sigterm": iso(stop.at), "in_hand": stop.in_hand,
            "waiting": stop.waiting, "requeued_at_exit": journal.requeued.get(record.pod),
            "last_delivery": iso(stop.last_delivery) if stop.last_delivery else None,
            "scale_down": f"{iso(scale.at)} {scale.old}->{scale.new} {scale.reason}"
            if scale else None,
            "held_at_decision": at_decision,
            "busy_for_before_decision": None if busy_for is None else round(busy_for, 2),
            "status_workers": workers,
            "class": busy_class(bool(at_decision), busy_for, workers),
            "killed": record.killed,
        })
    blind = []
    answers = list(soak.proxy.journal)
    for scale in downs:
        why = blind_reasons(scale, answers, soak.statuses.snapshots)
        if why:
            blind.append({"at": iso(scale.at), "scale": f"{scale.old}->{scale.new}",
                          "replica": scale.replica, "message": scale.message, "why": why})
    refusals: Counter[str] = Counter()
    seen_decisions: set[tuple[Any, Any]] = set()
    for _, written in soak.statuses.snapshots:
        last = written.get("lastDecision") or {}
        key = (last.get("at"), last.get("reason"))
        if last and key not in seen_decisions:
            seen_decisions.add(key)
            refusals[str(last.get("reason"))] += 1
    gaps = [end - begin for begin, end in soak.leaders.gaps]
    for index, fault in enumerate(soak.faults):
        until = soak.faults[index + 1].started if index + 1 < len(soak.faults) else now()
        fault.seen = what_the_operator_said(fault, soak.statuses.snapshots, soak.leaders.gaps,
                                            until)
    faults = [f for f in soak.faults if not f.skipped]
    recovered = [f for f in faults if f.recovered_after is not None]
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seed": soak.seed, "minutes": soak.minutes, "machine": machine(),
        "wall_seconds": round(now() - started),
        "published": len(confirmed), "processed": len(confirmed) - len(lost),
        "lost": len(lost), "lost_ids": lost[:50],
        "unconfirmed": len(soak.publisher.unconfirmed), "unconfirmed_processed": unconfirmed_done,
        "redelivered": redelivered, "processed_twice": twice,
        "worker_connection_failures": journal.connection_failures,
        "workers_started": len(records), "workers_terminated": len(terminated),
        "workers_killed": sum(1 for r in terminated if r.killed),
        "workers_terminated_unjournalled": unjournalled,
        "workers_exited_unasked": sum(1 for r in records.values()
                                      if r.exited_at is not None and r.sigterm_at is None),
        "busy_terminated": len(busy), "busy_terminated_detail": busy,
        "busy_terminated_by_class": dict(Counter(b["class"] for b in busy)),
        "scale_ups": len(all_scales) - len(downs), "scale_downs": len(downs),
        "blind_scale_downs": len(blind), "blind_detail": blind,
        "decisions_by_reason": dict(refusals),
        "no_leader_max_seconds": round(max(gaps, default=0.0), 1),
        "no_leader_total_seconds": round(sum(gaps), 1),
        "two_leaders_seconds": round(soak.leaders.two_leaders_seconds, 1),
        "two_leaders": [f"{iso(a)}-{iso(b)}" for a, b in soak.leaders.doubles],
        "operator_exits": soak.exits,
        "faults": [dataclasses.asdict(f) for f in soak.faults],
        "recovered": len(recovered), "faults_run": len(faults),
        "drain_seconds": None if soak.drain_seconds is None else round(soak.drain_seconds),
        "settle_seconds": None if soak.settle_seconds is None else round(soak.settle_seconds),
        "proxy_answers": {m.value: soak.proxy.count(m) for m in Mode},
        "out": str(soak.out),
    }
    return result


def table(result: dict[str, Any]) -> str:
    recovery = [f["recovered_after"] for f in result["faults"]
                if f["recovered_after"] is not None]
    rows = [
        ("messages published (broker-confirmed)", result["published"], ""),
        ("processed", result["processed"], "= published"),
        ("lost (published, never processed)", result["lost"], "0"),
        ("redelivered (deliveries flagged redelivered)", result["redelivered"], ""),
        ("busy workers terminated: work the operator could see, or cut off",
         operator_faults(result["busy_terminated_detail"]), "0"),
        *[(f"&nbsp;&nbsp;{BUSY_CLASSES[k]}", n, "0")
          for k, n in sorted(result["busy_terminated_by_class"].items()) if k in OPERATOR_FAULTS],
        ("&nbsp;&nbsp;SIGKILLed mid-message (grace 30 s over)",
         sum(1 for b in result["busy_terminated_detail"] if b["killed"]), "0"),
        ("workers that took a message after the statistics the decision read, and finished"
         " it in their grace period (SIGTERM while holding it)",
         len(result["busy_terminated_detail"]) - operator_faults(result["busy_terminated_detail"]),
         "any"),
        *[(f"&nbsp;&nbsp;{BUSY_CLASSES[k]}", n, "")
          for k, n in sorted(result["busy_terminated_by_class"].items())
          if k not in OPERATOR_FAULTS],
        ("scale-downs decided without in-flight knowledge", result["blind_scale_downs"], "0"),
        ("scale-downs / scale-ups", f"{result['scale_downs']} / {result['scale_ups']}", ""),
        ("seconds with no acting leader: max gap (total)",
         f"{result['no_leader_max_seconds']} ({result['no_leader_total_seconds']})", ""),
        ("seconds with two leaders", result["two_leaders_seconds"], "0"),
        ("operator replicas that exited unasked (restarted, as a kubelet would)",
         len(result["operator_exits"]), "0"),
        (f"recoveries (converged within {RECOVERY_BOUND:.0f} s of the fault's end)",
         f"{result['recovered']} of {result['faults_run']}"
         + (f", slowest {max(recovery):.1f} s" if recovery else ""), "all"),
    ]
    lines = ["| measure | value | expected |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "| fault | runs | recovered | recovery s (max) | how | the operator said |",
              "|---|---:|---:|---:|---|---|"]
    how = {
        "rabbitmq-restart": "testenv.sh down/up rabbitmq (SIGTERM by PID, 5-25 s down)",
        "mgmt-slow": "fault proxy: answers held 8 s (operator timeout 5 s), 15-40 s",
        "mgmt-500": "fault proxy: HTTP 500, 10-30 s",
        "mgmt-no-stats": "fault proxy: queues without counts, 10-30 s",
        "apiserver-restart": "kwokctl stop/start cluster, 5-20 s down",
        "operator-kill": "SIGKILL both replicas, restart after 2-10 s",
        "leader-kill": "SIGKILL the leader, restart after 0-20 s",
        "pods-list-denied": "120 messages, then the Role without pods/list for 20-50 s",
        "secret-rotation": "new broker user in the Secret, old deleted 2-10 s later",
    }
    for kind in Soak.KINDS:
        runs = [f for f in result["faults"] if f["kind"] == kind and not f["skipped"]]
        times = [f["recovered_after"] for f in runs if f["recovered_after"] is not None]
        said = sorted({s for f in runs for s in f["seen"] if not s.startswith("no leader")})
        gap = max((float(s.split()[2]) for f in runs for s in f["seen"]
                   if s.startswith("no leader")), default=None)
        if gap is not None:
            said.append(f"no leader up to {gap:.0f} s")
        slowest = f"{max(times):.1f}" if times else "-"
        lines.append(f"| {kind} | {len(runs)} | {len(times)} | {slowest} | {how[kind]} | "
                     f"{'; '.join(said) or '-'} |")
    return "\n".join(lines)


def write_files(soak: Soak, result: dict[str, Any]) -> None:
    (soak.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    with (soak.out / "proxy.journal").open("w") as out:
        for answer in list(soak.proxy.journal):
            out.write(f"{answer.arrived:.3f} {answer.answered:.3f} {answer.mode.value} "
                      f"{answer.status} {answer.path}\n")
    if soak.statuses is not None:
        with (soak.out / "statuses.jsonl").open("w") as out:
            for at, status in soak.statuses.snapshots:
                out.write(json.dumps({"t": at, "status": status}) + "\n")
    with (soak.out / "timeline.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["t", "replicas", "ready", "serving", "backlog", "desired", "reason",
                         "broker_reachable", "leader", "phase", "rate", "fault"])
        writer.writerows(soak.timeline)
    if soak.runner is not None:
        records = {pod: dataclasses.asdict(r) for pod, r in soak.runner.records().items()}
        (soak.out / "pods.json").write_text(json.dumps(records, indent=1))
    with (soak.out / "published.txt").open("w") as out:
        for message_id, at in soak.publisher.confirmed.items():
            out.write(f"{message_id} {at:.3f}\n")


# -- main -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def interrupted_as_exit() -> Iterator[None]:
    """SIGTERM ends the soak like Ctrl-C: through every `finally`, everything restored."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-messages", type=int, default=40_000,
                        help="the publisher stops there whatever the time (default 40,000)")
    parser.add_argument("--faults", default=",".join(Soak.KINDS),
                        help="the fault kinds to draw from, comma-separated (default: all)")
    parser.add_argument("--keep-env", action="store_true",
                        help="leave the soak environment running (it is stopped by default)")
    args = parser.parse_args()
    kinds = tuple(k for k in args.faults.split(",") if k)
    unknown = set(kinds) - set(Soak.KINDS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(Soak.KINDS)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = CACHE / "out" / f"soak-{stamp}-seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    started = now()
    say(f"soak: {args.minutes:g} min, seed {seed}, files in {out}")
    say(f"bringing up the separate environment QS_ENV={ENV_NAME} (ports +{PORT_OFFSET})")
    env = bring_up_separate(ENV_NAME, port_offset=PORT_OFFSET)
    env.apply_crd()
    soak = Soak(env, out, seed, args.minutes, args.max_messages, kinds=kinds)
    result: dict[str, Any] | None = None
    try:
        with interrupted_as_exit():
            try:
                soak.set_up()
                say(f"namespace {soak.namespace}, queue {soak.queue}; two replicas, one leads")
                soak.run()
            finally:
                soak.restore()
                soak.tear_down()
            result = report(soak, started)
            write_files(soak, result)
    finally:
        soak.clean_up()
        if not args.keep_env:
            with contextlib.suppress(Exception):
                testenv_sh(ENV_NAME, "down", port_offset=PORT_OFFSET)
    assert result is not None
    print()
    print(f"Fault soak, {result['date']}, seed {seed}, {args.minutes:g} min "
          f"({result['wall_seconds']} s wall), {result['machine']}")
    print()
    print(table(result))
    for key in ("busy_terminated_detail", "blind_detail"):
        for entry in result[key]:
            print(f"{key}: {json.dumps(entry, default=str)}")
    if result["lost"]:
        print(f"lost ids (first 50): {result['lost_ids']}")
    for entry in result["operator_exits"]:
        print(f"operator exit: {json.dumps(entry)}")
    if result["workers_terminated_unjournalled"]:
        print(f"terminated without a journal line: {result['workers_terminated_unjournalled']}")
    print(f"\nfiles: {out}")
    bad = (result["lost"] or operator_faults(result["busy_terminated_detail"])
           or result["blind_scale_downs"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
