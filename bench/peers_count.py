"""KEDA beside queuescaler at count: N idle queues on one broker, N scalers (issue 20).

    python bench/peers_count.py [--counts 100,1000] [--minutes 3] [--engines queuescaler,keda]
                                [--env peers]

Run by `make bench-peers` after bench/peers.py, in the same environment (QS_ENV=peers) with KEDA
up; by hand, bring both up first as bench/peers.py says.

For each count N and each engine, one after the other (never both at once, so the cluster's
and the broker's counters belong to one engine), in a namespace of their own:
  N idle durable queues, N Deployments of 1 replica (kwok's fake pods: nothing runs), and
  queuescaler  N QueueScalers with the operator's defaults (minReplicas 1, maxReplicas 10),
               served by one operator process started for this phase;
  keda         N ScaledObjects, RabbitMQ trigger, QueueLength over the management API, value
               10, minReplicaCount 1, KEDA's documented defaults (so the HPA's 15 s sync asks
               KEDA's metrics adapter for each one's metric, and KEDA asks the broker).
Once every scaler is ready (a QueueScaler with a decision; a ScaledObject Ready and its HPA
with a current metric), every Deployment's pod made, and a warm-up, measured over --minutes:
  mgmt requests and connections opened per minute, counted by a loopback relay in front of the
  management API that only the namespace's Secret names; AMQP connections opened per minute
  and open at the end, likewise (queuescaler keeps one open for its fast path; KEDA's
  QueueLength over http opens none); the broker's own connection count;
  CPU seconds (per minute) and peak RSS of the queuescaler operator, of keda-operator +
  keda-adapter, of the kube-controller-manager (its HPA controller does KEDA's scaling; it
  runs in both phases, with the same N Deployments, so its difference is the HPA's share)
  and of the kube-apiserver and the broker (RabbitMQ's VM);
  the apiserver's requests per minute (apiserver_request_total grown over the window: one
  engine runs at a time, so the growth is that engine's plus the cluster's background).
Prints one Markdown table; the raw numbers go to ~/.cache/queuescaler/out/peers-count-<time>.json.
Loopback only; the namespaces and queues made here are deleted; only the operator process
started here is stopped, by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika

from loopback_counter import RequestCounter  # the sibling modules
from peers import (
    LABEL,
    MAX_REPLICAS,
    MESSAGES_PER_REPLICA,
    Cluster,
    apiserver_owner,
    counters_over,
    keda_version,
    kubectl_apply,
    proc_cpu_seconds,
    proc_rss_mb,
    say,
)
from queuescaler_testkit.broker import BrokerAdmin, quote
from queuescaler_testkit.env import CACHE, read_testenv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess

ENGINES = ("queuescaler", "keda")
WARM_UP = 45.0
"""From every scaler ready to the window's start: the first samples' and HPAs' settling."""
SETTLE_BOUND = 900.0
"""From the objects applied to every scaler ready (1,000 ScaledObjects: 1,000 HPAs made)."""
APPLY_CHUNK = 200


@dataclass
class CountResult:
    engine: str
    count: int
    seconds: float = math.nan
    settle_seconds: float = math.nan
    mgmt_requests: int = 0
    mgmt_connections: int = 0
    mgmt_open: int = 0
    amqp_connections: int = 0
    amqp_open: int = 0
    broker_connections_open: float = math.nan
    usage: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Process group -> (CPU seconds over the window, peak RSS MB)."""
    counters: dict[str, dict[str, float]] = field(default_factory=dict)
    failure: str | None = None


def documents(engine: str, namespace: str, count: int, vhost: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    if engine == "keda":
        docs.append({"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
                     "metadata": {"name": "rabbitmq", "namespace": namespace},
                     "spec": {"secretTargetRef": [{"parameter": "host", "name": "rabbitmq",
                                                   "key": "host"}]}})
    for n in range(count):
        name = f"worker-{n:04d}"
        queue = f"{namespace}-{n:04d}"
        docs.append({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": {LABEL: "count"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "worker",
                                                           "image": "worker:fake"}]}}}})
        meta = {"name": name, "namespace": namespace}
        if engine == "queuescaler":
            docs.append({
                "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler", "metadata": meta,
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": name},
                         "minReplicas": 1, "maxReplicas": MAX_REPLICAS,
                         "source": {"rabbitmq": {"queue": queue, "vhost": vhost,
                                                 "connectionSecretRef": {"name": "rabbitmq"}}}}})
        else:
            docs.append({
                "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": meta,
                "spec": {"scaleTargetRef": {"name": name}, "minReplicaCount": 1,
                         "maxReplicaCount": MAX_REPLICAS,
                         "triggers": [{"type": "rabbitmq",
                                       "metadata": {"protocol": "http", "queueName": queue,
                                                    "mode": "QueueLength",
                                                    "value": str(MESSAGES_PER_REPLICA)},
                                       "authenticationRef": {"name": "rabbitmq"}}]}})
    return docs


def ready_count(cluster: Cluster, engine: str, namespace: str) -> int:
    env = cluster.env
    if engine == "queuescaler":
        out = env.kubectl("get", "qs", "-n", namespace, "-o",
                          "jsonpath={range .items[*]}{.status.lastDecision.reason}{\"\\n\"}{end}",
                          check=False)
        return sum(1 for line in out.stdout.splitlines() if line.strip())
    out = env.kubectl("get", "hpa", "-n", namespace, "-o",
                      "jsonpath={range .items[*]}{.status.currentMetrics[0].external.current"
                      ".averageValue}{\"\\n\"}{end}", check=False)
    return sum(1 for line in out.stdout.splitlines() if line.strip())


def pod_count(cluster: Cluster, namespace: str) -> int:
    out = cluster.env.kubectl("get", "pods", "-n", namespace, "--no-headers", "-o", "name",
                              check=False)
    return len(out.stdout.split())


class Sampler:
    """CPU and RSS of the named process groups every 2 s, in a thread."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.samples: dict[str, list[tuple[float, float, float]]] = {}
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="count-sampler")

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._halt.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            now = time.time()
            for name, pids in self.groups.items():
                with contextlib.suppress(OSError, ValueError):
                    self.samples.setdefault(name, []).append(
                        (now, sum(proc_cpu_seconds(p) for p in pids),
                         sum(proc_rss_mb(p) for p in pids)))
            if self._halt.wait(2.0):
                return

    def over(self, t0: float, t1: float) -> dict[str, tuple[float, float]]:
        found: dict[str, tuple[float, float]] = {}
        for name, samples in self.samples.items():
            inside = [s for s in samples if t0 - 2.5 <= s[0] <= t1 + 2.5]
            if len(inside) >= 2:
                found[name] = (inside[-1][1] - inside[0][1], max(s[2] for s in inside))
        return found


def run_phase(cluster: Cluster, engine: str, count: int, minutes: float,
              out: Any, settle: float = SETTLE_BOUND) -> CountResult:
    env = cluster.env
    result = CountResult(engine, count)
    namespace = f"peers-count-{engine}-{count}"
    management_port = int(env.management_url.rsplit(":", 1)[1].split("/")[0])
    mgmt = RequestCounter(management_port).start()
    amqp_parts = urlsplit(env.amqp_url)
    amqp = RequestCounter(amqp_parts.port or 5672).start()
    admin = BrokerAdmin(env.management_url)
    counted = f"http://{quote(admin.user)}:{quote(admin.password)}@127.0.0.1:{mgmt.listen_port}"
    counted_amqp = urlunsplit(amqp_parts._replace(
        netloc=f"{amqp_parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{amqp.listen_port}"))
    queues = [f"{namespace}-{n:04d}" for n in range(count)]
    operator: OperatorProcess | None = None
    try:
        connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
        try:
            channel = connection.channel()
            for queue in queues:
                channel.queue_declare(queue, durable=True)
        finally:
            connection.close()
        kubectl_apply(env, [{"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": namespace}}])
        kubectl_apply(env, [{"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": "rabbitmq", "namespace": namespace},
                             "stringData": {"amqpUrl": counted_amqp, "managementUrl": counted,
                                            "host": f"{counted}/{quote(env.vhost)}"}}])
        groups = {"keda": cluster.keda_pids(), **cluster.processes()}
        if engine == "queuescaler":
            operator = OperatorProcess(env, out / f"operator-peers-count-{count}.log", "-n",
                                       namespace).start()
            assert operator.process is not None
            groups["queuescaler"] = [operator.process.pid]
        began = time.time()
        docs = documents(engine, namespace, count, env.vhost)
        for i in range(0, len(docs), APPLY_CHUNK):
            kubectl_apply(env, docs[i:i + APPLY_CHUNK])
        say(f"  {engine} x {count}: applied in {time.time() - began:.0f} s; waiting for "
            "every scaler ready")
        wait_until(lambda: ready_count(cluster, engine, namespace) >= count,
                   timeout=settle, what=f"{count} {engine} scalers ready", every=5)
        # The replica sets' pods (one per Deployment, kwok's) made before the window: the
        # controller-manager creating them is not the engine's cost.
        wait_until(lambda: pod_count(cluster, namespace) >= count, timeout=settle,
                   what=f"{count} pods made", every=5)
        result.settle_seconds = time.time() - began
        say(f"  {engine} x {count}: ready in {result.settle_seconds:.0f} s; warm-up "
            f"{WARM_UP:.0f} s, then {minutes:g} min measured")
        with Sampler(groups) as sampler:
            time.sleep(WARM_UP)
            before = cluster.snapshot()
            t0 = time.time()
            r0, m0, a0 = mgmt.total(), mgmt.connections, amqp.connections
            time.sleep(minutes * 60)
            r1, m1, a1 = mgmt.total(), mgmt.connections, amqp.connections
            t1 = time.time()
            result.counters = counters_over(before, cluster.snapshot())
            result.mgmt_open, result.amqp_open = mgmt.open_connections, amqp.open_connections
        result.seconds = t1 - t0
        result.mgmt_requests, result.mgmt_connections = r1 - r0, m1 - m0
        result.amqp_connections = a1 - a0
        result.broker_connections_open = result.counters.get("rabbitmq", {}).get(
            "connections open", math.nan)
        result.usage = sampler.over(t0, t1)
    except Exception as error:
        result.failure = f"{type(error).__name__}: {error}"
        say(f"  {engine} x {count}: {result.failure}")
    finally:
        env.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        if operator is not None:
            operator.stop()
        with contextlib.suppress(Exception):
            wait_until(lambda: env.kubectl("get", "namespace", namespace,
                                           check=False).returncode != 0,
                       timeout=600, what=f"namespace {namespace} gone", every=5)
        with contextlib.suppress(Exception):
            connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
            try:
                channel = connection.channel()
                for queue in queues:
                    channel.queue_delete(queue)
            finally:
                connection.close()
        # The counting relays are left to the process's end (as in bench/peers.py): closing
        # them under the scalers' kept-alive connections only fills stderr with their tasks.
    return result


def num(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def cpu_cell(r: CountResult, group: str) -> str:
    if group not in r.usage:
        return "-"
    seconds, rss = r.usage[group]
    return f"{seconds / (r.seconds / 60):.2f} ({rss:.0f})"


def table(results: list[CountResult]) -> list[str]:
    heads = ["scalers", "mgmt requests /min", "mgmt connections opened /min",
             "AMQP connections opened /min (open)", "broker connections open",
             "operator CPU s/min (RSS MB)", "KEDA operator+adapter CPU s/min (RSS MB)",
             "kube-controller-manager CPU s/min (RSS MB)", "kube-apiserver CPU s/min",
             "RabbitMQ CPU s/min",
             "apiserver requests /min (engine's resources / all)", "ready after (s)"]
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    for r in results:
        name = f"{r.count} {'QueueScalers' if r.engine == 'queuescaler' else 'ScaledObjects'}"
        if r.failure:
            lines.append(f"| {name} | harness failure: {r.failure} |")
            continue
        per_min = r.seconds / 60

        apiserver = r.counters.get("apiserver", {})
        own = "queuescaler" if r.engine == "queuescaler" else "KEDA + HPA"
        mine = sum(v for k, v in apiserver.items() if apiserver_owner(k) == own)
        lines.append("| " + " | ".join([
            name, f"{r.mgmt_requests / per_min:.0f}", f"{r.mgmt_connections / per_min:.1f}",
            f"{r.amqp_connections / per_min:.1f} ({r.amqp_open})",
            num(r.broker_connections_open, 0),
            cpu_cell(r, "queuescaler"), cpu_cell(r, "keda"),
            cpu_cell(r, "kube-controller-manager"), cpu_cell(r, "kube-apiserver").split(" ")[0],
            cpu_cell(r, "rabbitmq").split(" ")[0],
            f"{mine / per_min:.0f} / {sum(apiserver.values()) / per_min:.0f}",
            num(r.settle_seconds, 0),
        ]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--counts", default="100,1000")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--minutes", type=float, default=3.0, help="each phase's window")
    parser.add_argument("--env", default=os.environ.get("QS_ENV") or "peers")
    parser.add_argument("--settle", type=float, default=SETTLE_BOUND,
                        help="seconds from the apply to every scaler ready, at most")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c]
    engines = [e for e in args.engines.split(",") if e]
    if any(e not in ENGINES for e in engines) or not counts or min(counts) < 1:
        parser.error("engines: " + ", ".join(ENGINES) + "; counts >= 1")
    began = time.monotonic()
    env = read_testenv(args.env)
    cluster = Cluster(env, args.env, int(os.environ.get("QS_PORT_OFFSET") or 600))
    for pid in cluster.keda_pids():
        os.kill(pid, 0)  # raises unless KEDA is up (hack/keda.sh up)
    env.apply_crd()
    out = CACHE / "out"
    out.mkdir(parents=True, exist_ok=True)
    results: list[CountResult] = []
    for count in counts:
        for engine in engines:
            say(f"{engine} x {count} ({args.minutes:g} min window)")
            results.append(run_phase(cluster, engine, count, args.minutes, out, args.settle))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    raw = out / f"peers-count-{stamp}.json"
    raw.write_text(json.dumps({"keda": keda_version(), "minutes": args.minutes,
                               "load": os.getloadavg(),
                               "results": [asdict(r) for r in results]}))
    print(f"\n### At count: idle queues on one broker (KEDA {keda_version()})\n")
    print("\n".join(table(results)))
    print(
        f"\nEach phase alone on the cluster, {args.minutes:g} min measured after every scaler "
        f"was ready and {WARM_UP:.0f} s of warm-up; minReplicas 1, maxReplicas {MAX_REPLICAS} "
        "everywhere. Connections: loopback relays in front of the management API and the AMQP "
        "port, named only by the phase's Secret. CPU per minute of the window; RSS its peak. "
        "KEDA's processes run in every phase (idle in queuescaler's); the kube-controller-"
        "manager too, over the same N Deployments: its difference between the two phases is "
        "the HPA's share. apiserver requests: its own counter, by resource: the engine's "
        "(queuescaler.io, or keda.sh + HPAs + external metrics) / every request in the "
        f"window. Raw: {raw}. Wall clock: {time.monotonic() - began:.0f} s; load average at the "
        f"end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    if any(r.failure for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
