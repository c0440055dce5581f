"""Smoke tests: each real part of the local environment answers for real."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from kubernetes import client, config

from queuescaler_testkit.broker import BrokerAdmin
from queuescaler_testkit.env import TestEnv, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def apps(testenv: TestEnv) -> client.AppsV1Api:
    return client.AppsV1Api(config.new_client_from_config(config_file=str(testenv.kubeconfig)))


@pytest.fixture(scope="module")
def core(testenv: TestEnv) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(testenv.kubeconfig)))


def _worker_deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "worker", "image": "worker:fake"}]},
            },
        },
    }


def _running_pods(core: client.CoreV1Api, namespace: str, app: str) -> list[Any]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return [
        p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
    ]


def test_deployment_scaled_through_scale_subresource_gets_running_pods_on_kwok_nodes(
    apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str
) -> None:
    apps.create_namespaced_deployment(namespace, _worker_deployment("worker"))

    apps.patch_namespaced_deployment_scale("worker", namespace, {"spec": {"replicas": 3}})
    pods = wait_until(
        lambda: (p := _running_pods(core, namespace, "worker")) and len(p) == 3 and p,
        timeout=90,
        what="3 Running pods",
    )
    nodes = {n.metadata.name: n for n in core.list_node().items}
    for pod in pods:
        node = nodes[pod.spec.node_name]
        assert node.metadata.annotations.get("kwok.x-k8s.io/node") == "fake"

    apps.patch_namespaced_deployment_scale("worker", namespace, {"spec": {"replicas": 0}})
    wait_until(
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=worker").items,
        timeout=90,
        what="all pods gone after scaling to 0",
    )
    scale = apps.read_namespaced_deployment_scale("worker", namespace)
    assert (scale.spec.replicas or 0) == 0  # the API omits a zero count
    assert scale.status.replicas == 0


def _management_queue(testenv: TestEnv, queue: str) -> dict[str, Any]:
    body: dict[str, Any] = BrokerAdmin(testenv.management_url, timeout=10).queue(
        testenv.vhost, queue
    )
    return body


@pytest.fixture
def durable_queue(testenv: TestEnv) -> Iterator[tuple[pika.BlockingConnection, str]]:
    connection = pika.BlockingConnection(pika.URLParameters(testenv.amqp_url))
    channel = connection.channel()
    queue = f"smoke-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, durable=True)
    yield connection, queue
    if connection.is_open:
        connection.channel().queue_delete(queue)
        connection.close()


def test_management_api_reports_ready_then_unacked_messages(
    testenv: TestEnv, durable_queue: tuple[pika.BlockingConnection, str]
) -> None:
    connection, queue = durable_queue
    channel = connection.channel()
    channel.confirm_delivery()
    persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    for i in range(100):
        channel.basic_publish("", queue, f"message {i}".encode(), persistent, mandatory=True)

    wait_until(
        lambda: _management_queue(testenv, queue).get("messages_ready") == 100,
        timeout=30,
        what="the management API to report 100 ready messages",
    )

    consumer = connection.channel()
    consumer.basic_qos(prefetch_count=100)
    held: list[int] = []
    consumer.basic_consume(queue, lambda ch, method, props, body: held.append(method.delivery_tag))
    wait_until(
        lambda: connection.process_data_events(time_limit=0.2) or len(held) == 100,
        timeout=30,
        what="the consumer to receive 100 messages",
    )

    def unacked_reported() -> bool:
        connection.process_data_events(time_limit=0)  # keep the connection's heartbeats flowing
        stats = _management_queue(testenv, queue)
        return stats.get("messages_unacknowledged") == 100 and stats.get("messages_ready") == 0

    wait_until(unacked_reported, timeout=30, what="100 unacknowledged, 0 ready")


def test_prometheus_scrapes_a_target_and_answers_a_query(testenv: TestEnv) -> None:
    query = urllib.parse.urlencode({"query": 'up{job="prometheus"}'})

    def scraped_up() -> bool:
        with urllib.request.urlopen(
            f"{testenv.prometheus_url}/api/v1/query?{query}", timeout=10
        ) as r:
            result = json.load(r)["data"]["result"]
        return bool(result) and result[0]["value"][1] == "1"

    wait_until(scraped_up, timeout=30, what="Prometheus to scrape itself and report up == 1")
