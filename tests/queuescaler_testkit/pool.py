"""A worker pool for end-to-end scenarios: a queue, a Secret, a Deployment and its QueueScaler.

Everything lives in the test's namespace (deleted afterwards) except the queue, which the
pool deletes itself.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import yaml
from prometheus_client import parser

from queuescaler_testkit.env import TestEnv, wait_until
from queuescaler_testkit.publisher import delete_queue
from queuescaler_testkit.status import condition_of, get_scaler, status_of


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


FAST_BEHAVIOR: dict[str, Any] = {
    "pollingIntervalSeconds": 2,
    "behavior": {
        "scaleUp": {"cooldownSeconds": 2},
        "scaleDown": {"cooldownSeconds": 5, "stabilizationSeconds": 10, "maxStepPercent": 100},
    },
}
"""Short windows, so a scenario sees a whole up-and-down cycle in a minute (not the defaults)."""


def worker_deployment(name: str, grace_seconds: int) -> dict[str, Any]:
    """A pool's Deployment at zero replicas, its pods played by the pod runner."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": grace_seconds,
                    "containers": [{"name": "worker", "image": "worker:fake"}],
                },
            },
        },
    }


@dataclass
class Pool:
    """One scenario's worker pool and its QueueScaler, all named after `name`."""

    testenv: TestEnv
    namespace: str
    name: str = "worker"
    queue: str = field(default_factory=lambda: f"e2e-{uuid.uuid4().hex[:8]}")
    grace_seconds: int = 10

    def create(self, *, amqp_url: str | None = None, management_url: str | None = None) -> Pool:
        connection = pika.BlockingConnection(pika.URLParameters(self.testenv.amqp_url))
        connection.channel().queue_declare(self.queue, durable=True)
        connection.close()
        self.apply_secret(amqp_url=amqp_url, management_url=management_url)
        self.apply(worker_deployment(self.name, self.grace_seconds))
        return self

    def apply_secret(
        self, *, amqp_url: str | None = None, management_url: str | None = None
    ) -> None:
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "rabbitmq"},
                "stringData": {
                    "amqpUrl": amqp_url or self.testenv.amqp_url,
                    "managementUrl": management_url or self.testenv.management_url,
                },
            }
        )

    def apply(self, manifest: dict[str, Any]) -> None:
        # Server-side: a client-side apply copies a Secret's password, in clear text, into
        # the kubectl.kubernetes.io/last-applied-configuration annotation.
        self.testenv.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager", "e2e",
            "-n", self.namespace, "-f", "-", input=yaml.safe_dump(manifest),
        )

    def apply_scaler(self, **spec: Any) -> None:
        """Create or change the QueueScaler; `spec` is merged over a minimal valid one."""
        base: dict[str, Any] = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name},
            "maxReplicas": 5,
            "source": {
                "rabbitmq": {
                    "queue": self.queue,
                    "vhost": self.testenv.vhost,
                    "connectionSecretRef": {"name": "rabbitmq"},
                }
            },
        }
        self.apply(
            {
                "apiVersion": "queuescaler.io/v1alpha1",
                "kind": "QueueScaler",
                "metadata": {"name": self.name},
                "spec": deep_merge(deep_merge(base, FAST_BEHAVIOR), spec),
            }
        )

    def scaler(self) -> dict[str, Any]:
        return get_scaler(self.testenv, self.namespace, self.name)

    def status(self) -> dict[str, Any]:
        return status_of(self.scaler())

    def condition(self, kind: str) -> dict[str, Any] | None:
        return condition_of(self.scaler(), kind)

    def replicas(self) -> int:
        out = self.testenv.kubectl(
            "get", "deployment", self.name, "-n", self.namespace, "-o", "jsonpath={.spec.replicas}"
        )
        return int(out.stdout or 0)

    def events(self, kind: str = "QueueScaler", name: str | None = None) -> list[dict[str, Any]]:
        out = self.testenv.kubectl(
            "get",
            "events",
            "-n",
            self.namespace,
            "-o",
            "json",
            "--field-selector",
            f"involvedObject.kind={kind},involvedObject.name={name or self.name}",
        )
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def largest_scale(self) -> int:
        """The highest replica count a ScaledUp Event of this QueueScaler names."""
        counts = [
            int(m.group(1))
            for e in self.events() if e.get("reason") == "ScaledUp"
            if (m := re.search(r" to (\d+)", e.get("message", "")))
        ]
        return max(counts, default=0)

    def event_reasons(self, kind: str = "QueueScaler") -> set[str]:
        return {e.get("reason", "") for e in self.events(kind)}

    def wait_condition(
        self, kind: str, status: str, *, reason: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            found = self.condition(kind)
            if (
                found
                and found.get("status") == status
                and (reason is None or found.get("reason") == reason)
            ):
                return found
            return None

        return wait_until(
            matches,
            timeout=timeout,
            what=f"condition {kind}={status}" + (f" ({reason})" if reason else ""),
        )

    def delete_queue(self) -> None:
        delete_queue(self.testenv.amqp_url, self.queue)


def scaler_gauges(metrics_text: str, namespace: str, name: str) -> dict[str, float]:
    """The operator's gauges for one QueueScaler, keyed by metric name (and state for backlog)."""
    found: dict[str, float] = {}
    for family in parser.text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("scaler") != name or labels.get("scaler_namespace") != namespace:
                continue
            key = sample.name + (f":{labels['state']}" if "state" in labels else "")
            found[key] = sample.value
    return found


@dataclass
class Timeline:
    """Samples (time, backlog, desired, current) every half second, in a thread.

    Backlog and desired are what the operator sees (its live metrics), current is the
    Deployment's replica count.
    """

    pool: Pool
    metrics: Callable[[], str]
    rows: list[tuple[float, int | None, int | None, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Timeline:
        started = time.monotonic()

        def record() -> None:
            while not self._stop.wait(0.5):
                try:
                    status = self.pool.status()
                    replicas = self.pool.replicas()
                except AssertionError:
                    continue
                self.rows.append(
                    (
                        round(time.monotonic() - started, 1),
                        (status.get("backlog") or {}).get("total"),
                        status.get("desiredReplicas"),
                        replicas,
                    )
                )

        self._thread = threading.Thread(target=record, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def table(self) -> str:
        """Rows where something changed, as a Markdown table."""
        lines = ["| t (s) | backlog | desired | current |", "|---:|---:|---:|---:|"]
        previous: tuple[int | None, int | None, int] | None = None
        for t, backlog, desired, current in self.rows:
            if (backlog, desired, current) != previous:
                lines.append(f"| {t} | {backlog} | {desired} | {current} |")
                previous = (backlog, desired, current)
        return "\n".join(lines)
