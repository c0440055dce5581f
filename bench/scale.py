"""What a tick costs at 1,000 and 10,000 QueueScalers, on one and on ten brokers.

    python bench/scale.py [--scalers 1000,10000] [--brokers 1,10] [--window 45]

For each combination: N QueueScalers and their N Deployments (replicas 0, on the local
kwok cluster), N queues in RabbitMQ spread over B vhosts (each vhost is a broker to the
operator: its own Secret, its own connection), and one real operator process. Once every
QueueScaler has been decided and written once, the steady state is measured over
`--window` seconds (the QueueScalers' polling interval is 15 s, so a window holds
several full cycles). Printed per cycle: wall time of the cycle's tick, operator CPU
seconds, operator RSS, management HTTP requests (counted on the wire by a loopback
relay), apiserver requests by verb and resource (from the apiserver's own metrics), and
status writes. Loopback only; everything created is deleted at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pika
from kubernetes import client, config

from loopback_counter import RequestCounter
from queuescaler_testkit.broker import BrokerAdmin
from queuescaler_testkit.env import TestEnv, bring_up, wait_until
from queuescaler_testkit.operator_process import OperatorProcess

POLL_SECONDS = 15
SCRAPE_TIMEOUT = 60
"""A scrape of 10,000 QueueScalers' series takes seconds (Prometheus allows 10 by default)."""
CREATE_THREADS = 16
STATUS_WRITES = "PATCH queuescalers/status"


@dataclass(frozen=True)
class Row:
    scalers: int
    brokers: int
    cycles: int
    tick_wall_s: float
    cpu_s_per_cycle: float
    rss_mb: float
    http_per_cycle: float
    api_per_cycle: dict[str, float]
    status_writes: int
    setup_s: float
    first_pass_s: float
    scrape_s: float


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _apiserver_requests(api: client.ApiClient) -> Counter[str]:
    """apiserver_request_total summed by verb and resource (the apiserver's own count)."""
    response = api.call_api("/metrics", "GET", _preload_content=False,
                            auth_settings=["BearerToken"])
    raw = response[0] if isinstance(response, tuple) else response
    text = raw.data.decode()
    counts: Counter[str] = Counter()
    pattern = re.compile(r'^apiserver_request_total\{([^}]*)\} (\S+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        # The operator never deletes; DELETEs are the namespace controller tidying up.
        if labels.get("verb") == "DELETE":
            continue
        if resource in {"queuescalers", "queuescalers/status", "deployments", "deployments/scale",
                        "events", "secrets", "leases", "pods"}:
            counts[f"{labels.get('verb', '?')} {resource}"] += int(float(m.group(2)))
    return counts


def _operator_metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _setup(env: TestEnv, api: client.ApiClient, scalers: int, brokers: int,
           relay_port: int, tag: str) -> list[str]:
    """Namespaces (one per broker), Secrets, Deployments, QueueScalers and queues."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    mgmt = urllib.parse.urlsplit(env.management_url)
    amqp = urllib.parse.urlsplit(env.amqp_url)
    namespaces = [f"bench-{tag}-{b}" for b in range(brokers)]
    vhosts = [f"bench-{tag}-{b}" for b in range(brokers)]
    admin = env.admin()
    for vhost in vhosts:
        admin.add_vhost(vhost)
        admin.grant(vhost, admin.user)
    for namespace, vhost in zip(namespaces, vhosts, strict=True):
        core.create_namespace({"metadata": {"name": namespace}})
        core.create_namespaced_secret(namespace, {
            "metadata": {"name": "rabbitmq"},
            "stringData": {
                "amqpUrl": f"amqp://{amqp.username}:{amqp.password}@{amqp.hostname}:{amqp.port}/{vhost}",
                "managementUrl": f"http://{mgmt.username}:{mgmt.password}@127.0.0.1:{relay_port}",
            },
        })
    per_broker = [range(b, scalers, brokers) for b in range(brokers)]
    for b, indexes in enumerate(per_broker):
        connection = pika.BlockingConnection(pika.URLParameters(
            f"amqp://{amqp.username}:{amqp.password}@{amqp.hostname}:{amqp.port}/{vhosts[b]}"))
        channel = connection.channel()
        for i in indexes:
            channel.queue_declare(f"q-{i}", durable=True)
        connection.close()

    def create(i: int) -> None:
        b = i % brokers
        namespace, name = namespaces[b], f"w-{i}"
        apps.create_namespaced_deployment(namespace, {
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "w", "image": "w:fake"}]}}},
        })
        custom.create_namespaced_custom_object("queuescaler.io", "v1alpha1", namespace,
                                               "queuescalers", {
            "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
            "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": name},
                     "minReplicas": 0, "maxReplicas": 10, "pollingIntervalSeconds": POLL_SECONDS,
                     "source": {"rabbitmq": {"queue": f"q-{i}", "vhost": vhosts[b],
                                             "connectionSecretRef": {"name": "rabbitmq"}}}},
        })

    with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(create, range(scalers)))
    return namespaces


def _teardown(env: TestEnv, api: client.ApiClient, namespaces: list[str]) -> None:
    core = client.CoreV1Api(api)
    for namespace in namespaces:
        core.delete_namespace(namespace)
    admin = BrokerAdmin(env.management_url, timeout=60)
    for vhost in namespaces:
        with contextlib.suppress(OSError):
            admin.delete_vhost(vhost)


def _remaining(api: client.ApiClient, namespaces: list[str]) -> list[str]:
    names = {n.metadata.name for n in client.CoreV1Api(api).list_namespace().items}
    return [n for n in namespaces if n in names]


def _venv_path() -> str:
    return f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"


def measure(
    env: TestEnv, scalers: int, brokers: int, window: float, out: Path,
    profile: Path | None = None,
) -> Row:
    api = config.new_client_from_config(config_file=str(env.kubeconfig))
    mgmt_port = urllib.parse.urlsplit(env.management_url).port or 0
    relay = RequestCounter(mgmt_port).start()
    tag = uuid.uuid4().hex[:6]
    started = time.monotonic()
    namespaces = _setup(env, api, scalers, brokers, relay.listen_port, tag)
    setup_s = time.monotonic() - started
    writes_before = _apiserver_requests(api).get(STATUS_WRITES, 0)
    operator = OperatorProcess(env, out / f"operator-{scalers}-{brokers}.log",
                               "--no-fast-path", "--namespace", f"bench-{tag}-*").start()
    try:
        assert operator.process is not None
        pid = operator.process.pid
        first = time.monotonic()

        def scrape() -> str:
            return operator.metrics(timeout=SCRAPE_TIMEOUT)

        # The first pass decides and writes every QueueScaler once.
        wait_until(lambda: _operator_metric(scrape(), "queuescaler_scalers") >= scalers,
                   timeout=600, what="the operator to see every QueueScaler", every=2)
        # Every QueueScaler's first status is one PATCH, counted by the apiserver itself.
        wait_until(lambda: _apiserver_requests(api).get(STATUS_WRITES, 0) - writes_before
                   >= scalers, timeout=900, what="every QueueScaler written once", every=5)
        time.sleep(POLL_SECONDS)  # one more cycle, then a steady window
        first_pass_s = time.monotonic() - first
        text = scrape()
        cpu0, api0, http0 = _proc_cpu_seconds(pid), _apiserver_requests(api), relay.total()
        ticks0 = _operator_metric(text, "queuescaler_scaler_ticks_total")
        tick_sum0 = _operator_metric(text, "queuescaler_tick_duration_seconds_sum")
        if profile is not None:
            # py-spy samples the operator from outside for the whole window.
            subprocess.run(["py-spy", "record", "--pid", str(pid), "--duration",
                            str(int(window)), "--format", "raw", "--output", str(profile),
                            "--nonblocking"], check=False, capture_output=True,
                           timeout=window + 60, env={**os.environ, "PATH": _venv_path()})
        else:
            time.sleep(window)
        # The operator's CPU is read before the scrape, which is timed on its own.
        cpu1, api1, http1 = _proc_cpu_seconds(pid), _apiserver_requests(api), relay.total()
        scrape_started = time.monotonic()
        text = scrape()
        scrape_s = time.monotonic() - scrape_started
        cycles = max(1, round((_operator_metric(text, "queuescaler_scaler_ticks_total") - ticks0)
                              / scalers))
        tick_sum = _operator_metric(text, "queuescaler_tick_duration_seconds_sum") - tick_sum0
        api_delta = {
            k: (api1[k] - api0.get(k, 0)) / cycles for k in api1 if api1[k] - api0.get(k, 0)
        }
        return Row(
            scalers=scalers, brokers=brokers, cycles=cycles,
            tick_wall_s=tick_sum / cycles,
            cpu_s_per_cycle=(cpu1 - cpu0) / cycles,
            rss_mb=_proc_rss_mb(pid),
            http_per_cycle=(http1 - http0) / cycles,
            api_per_cycle=api_delta,
            status_writes=int(api1.get(STATUS_WRITES, 0) - api0.get(STATUS_WRITES, 0)),
            setup_s=setup_s, first_pass_s=first_pass_s, scrape_s=scrape_s,
        )
    finally:
        operator.stop()
        relay.stop()
        _teardown(env, api, namespaces)
        # Deleting 20,000 objects keeps the apiserver busy for minutes: the next run
        # starts only when they are gone, so it does not pay for this one's cleanup.
        wait_until(lambda: not _remaining(api, namespaces), timeout=900, every=5,
                   what=f"namespaces {namespaces[0]}.. to be deleted")


def table(rows: list[Row]) -> str:
    lines = [
        f"| QueueScalers | brokers | tick wall (s) | CPU s / cycle (of {POLL_SECONDS} s) "
        "| RSS (MB) | broker HTTP requests / cycle | apiserver requests / cycle "
        "| status writes in window |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        api = ", ".join(f"{k}: {v:.1f}" for k, v in sorted(r.api_per_cycle.items())) or "none"
        lines.append(f"| {r.scalers:,} | {r.brokers} | {r.tick_wall_s:.2f} | "
                     f"{r.cpu_s_per_cycle:.2f} | {r.rss_mb:.0f} | {r.http_per_cycle:.1f} | "
                     f"{api} | {r.status_writes} |")
    lines.append("")
    lines.append("| QueueScalers | brokers | setup (s) | first pass: every QueueScaler written "
                 "once, then one more cycle (s) | one /metrics scrape (s) | cycles measured |")
    lines.append("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lines.append(f"| {r.scalers:,} | {r.brokers} | {r.setup_s:.0f} | {r.first_pass_s:.0f} "
                     f"| {r.scrape_s:.1f} | {r.cycles} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scalers", default="1000,10000")
    parser.add_argument("--brokers", default="1,10")
    parser.add_argument("--window", type=float, default=45.0)
    parser.add_argument("--profile", action="store_true",
                        help="Record py-spy stacks of the operator during each window "
                             "(collapsed stacks in ~/.cache/queuescaler/out/).")
    args = parser.parse_args()
    env = bring_up()
    env.apply_crd()
    out = Path.home() / ".cache" / "queuescaler" / "out"
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        measure(env, int(n), int(b), args.window, out,
                out / f"profile-{n}-{b}.txt" if args.profile else None)
        for n in args.scalers.split(",") for b in args.brokers.split(",")
    ]
    print(table(rows))


if __name__ == "__main__":
    main()
