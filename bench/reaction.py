"""Reaction time: a burst published to a pool at rest, until the operator's /scale patch.

    python bench/reaction.py [--bursts 20] [--burst-size 50]

Twenty pools at zero (each a Deployment, a QueueScaler at its default 15 s polling
interval and a queue) on the local cluster and broker, one real operator process. Each
pool gets one burst, a second or two apart; the clock starts when the broker has
confirmed the burst's last message and stops when a watch on the Deployments sees that
pool's replica count leave zero (the patch, observed from outside the operator). Run
once with the AMQP fast path on and once with it off (management API only). Prints
p50, p95 and max. Loopback only; everything created is deleted at the end.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
import uuid
from pathlib import Path

import pika
from kubernetes import client, config, watch

from queuescaler_testkit.env import TestEnv, bring_up, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.status import condition_of


def _pools(env: TestEnv, api: client.ApiClient, namespace: str, count: int) -> list[str]:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "rabbitmq"},
        "stringData": {"amqpUrl": env.amqp_url, "managementUrl": env.management_url},
    })
    queues = [f"{namespace}-q{i}" for i in range(count)]
    connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    channel = connection.channel()
    for queue in queues:
        channel.queue_declare(queue, durable=True)
    connection.close()
    for i, queue in enumerate(queues):
        name = f"w{i}"
        apps.create_namespaced_deployment(namespace, {
            "metadata": {"name": name},
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
                     "minReplicas": 0, "maxReplicas": 10,
                     "source": {"rabbitmq": {"queue": queue, "vhost": env.vhost,
                                             "connectionSecretRef": {"name": "rabbitmq"}}}},
        })
    return queues


def _idle(api: client.ApiClient, namespace: str, count: int) -> bool:
    items = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "queuescaler.io", "v1alpha1", namespace, "queuescalers")["items"]
    idle = sum(1 for item in items
               if (condition_of(item, "Active") or {}).get("reason") == "Idle")
    return idle == count


def run(env: TestEnv, fast_path: bool, bursts: int, burst_size: int, out: Path) -> list[float]:
    api = config.new_client_from_config(config_file=str(env.kubeconfig))
    namespace = f"reaction-{uuid.uuid4().hex[:6]}"
    queues = _pools(env, api, namespace, bursts)
    flag = "--fast-path" if fast_path else "--no-fast-path"
    operator = OperatorProcess(env, out / f"operator-reaction-{flag}.log", flag,
                               "-n", namespace).start()
    woke: dict[str, float] = {}
    stop = threading.Event()

    def watch_deployments() -> None:
        apps = client.AppsV1Api(config.new_client_from_config(config_file=str(env.kubeconfig)))
        while not stop.is_set():
            stream = watch.Watch()
            for event in stream.stream(apps.list_namespaced_deployment, namespace,
                                       timeout_seconds=5):
                deployment = event["object"]
                if (deployment.spec.replicas or 0) > 0:
                    woke.setdefault(deployment.metadata.name, time.monotonic())

    watcher = threading.Thread(target=watch_deployments, daemon=True)
    try:
        wait_until(lambda: _idle(api, namespace, bursts), timeout=120,
                   what="every pool idle at zero", every=1)
        watcher.start()
        confirmed: dict[str, float] = {}
        connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
        channel = connection.channel()
        channel.confirm_delivery()
        rng = random.Random(7)
        for i, queue in enumerate(queues):
            for n in range(burst_size):
                channel.basic_publish("", queue, f"{n}".encode(),
                                      pika.BasicProperties(delivery_mode=2), mandatory=True)
            confirmed[f"w{i}"] = time.monotonic()
            connection.sleep(rng.uniform(1.0, 2.0))
        connection.close()
        wait_until(lambda: len(woke) >= bursts, timeout=120, what="every pool woken", every=1)
        return sorted(woke[name] - confirmed[name] for name in confirmed)
    finally:
        stop.set()
        operator.stop()
        client.CoreV1Api(api).delete_namespace(namespace)
        connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        connection.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--burst-size", type=int, default=50)
    args = parser.parse_args()
    env = bring_up()
    env.apply_crd()
    out = Path.home() / ".cache" / "queuescaler" / "out"
    out.mkdir(parents=True, exist_ok=True)
    print("| AMQP fast path | bursts | p50 (s) | p95 (s) | max (s) | mean (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for fast_path in (True, False):
        times = run(env, fast_path, args.bursts, args.burst_size, out)
        print(f"| {'on' if fast_path else 'off (management API only)'} | {len(times)} | "
              f"{percentile(times, 0.5):.2f} | {percentile(times, 0.95):.2f} | "
              f"{max(times):.2f} | {statistics.fmean(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
