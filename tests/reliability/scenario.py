"""Building blocks of the reliability scenarios: the broker user, pools with real workers,
what the operator said (Events, conditions), and the scans for leaked secrets and tracebacks.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from queuescaler_testkit.env import CACHE, TestEnv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunner, PodRunnerFactory, pika_worker_env
from queuescaler_testkit.pool import Pool
from queuescaler_testkit.publisher import publish_messages, read_processed

HERE = Path(__file__).resolve().parent
RESULTS = CACHE / "out" / "reliability-latest.jsonl"
"""One JSON line per scenario of the latest run: what tests/reliability/README.md reports."""


@dataclass(frozen=True)
class BrokerUser:
    """A dedicated RabbitMQ user whose password must never show up anywhere."""

    name: str
    password: str
    amqp_port: int
    management_port: int
    vhost: str

    def _userinfo(self) -> str:
        quote = urllib.parse.quote
        return f"{quote(self.name, safe='')}:{quote(self.password, safe='')}"

    def amqp_url(self, port: int | None = None) -> str:
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"amqp://{self._userinfo()}@127.0.0.1:{port or self.amqp_port}/{vhost}"

    def management_url(self, port: int | None = None) -> str:
        return f"http://{self._userinfo()}@127.0.0.1:{port or self.management_port}"

    def forms(self) -> set[str]:
        """The password as written and as URLs and forms encode it (upper and lower hex)."""
        encoded = {
            urllib.parse.quote(self.password, safe=""),
            urllib.parse.quote(self.password),
            urllib.parse.quote_plus(self.password),
        }
        lower = {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in encoded}
        return {self.password, *encoded, *lower}


@dataclass
class SecretPool(Pool):
    """A Pool whose Secret is written by server-side apply, with base64 `data`.

    `kubectl apply` (client-side) copies a Secret's `stringData` into the
    last-applied-configuration annotation in clear text: the harness itself would leak the
    password the scans look for. Server-side apply keeps no such annotation.
    """

    user: BrokerUser | None = None
    management_port: int | None = None
    """Where the Secret's managementUrl points (a fault proxy), default the broker's."""

    def apply_secret(
        self, *, amqp_url: str | None = None, management_url: str | None = None
    ) -> None:
        assert self.user is not None
        data = {
            "amqpUrl": amqp_url or self.user.amqp_url(),
            "managementUrl": management_url or self.user.management_url(self.management_port),
        }
        write_secret(self.testenv, self.namespace, "rabbitmq", data)


def write_secret(
    env: TestEnv, namespace: str, name: str, data: Mapping[str, str | bytes]
) -> None:
    """Create or replace a Secret by server-side apply (no last-applied annotation)."""
    encoded = {
        key: base64.b64encode(value if isinstance(value, bytes) else value.encode()).decode()
        for key, value in data.items()
    }
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "type": "Opaque", "data": encoded}
    env.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=reliability",
                "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


def reconnecting_worker(pod_name: str) -> list[str]:
    """The e2e pika consumer wrapped to reconnect after a broker restart."""
    return [sys.executable, str(HERE / "workers" / "reconnecting_worker.py")]


@dataclass
class Run:
    """One pool under load: its QueueScaler, its workers and the ids it must process."""

    pool: SecretPool
    runner: PodRunner
    processed: Path
    ids: list[str] = field(default_factory=list)

    def publish(self, count: int) -> list[str]:
        new = publish_messages(self.pool.testenv.amqp_url, self.pool.queue, count)
        self.ids.extend(new)
        return new

    def lost(self) -> list[str]:
        done = read_processed(self.processed)
        return [i for i in self.ids if i not in done]

    def redelivered(self) -> int:
        return sum(1 for n in read_processed(self.processed).values() if n > 1)

    def wait_all_processed(self, timeout: float = 150) -> None:
        try:
            wait_until(lambda: not self.lost(), timeout=timeout,
                       what=f"every message of {self.pool.name} processed "
                            f"({len(self.ids)} published)", every=1.0)
        except AssertionError as error:
            alive = len(self.runner.serving())
            raise AssertionError(f"{error}: {len(self.lost())} missing, {alive} workers serving"
                                 f"{describe(self.pool)}") from None

    def close(self) -> None:
        self.pool.delete_queue()


def start_run(
    env: TestEnv, namespace: str, user: BrokerUser, runners: PodRunnerFactory, tmp: Path,
    name: str, *, management_port: int | None = None, work_seconds: float = 0.2,
    **spec: Any,
) -> Run:
    """A pool named `name` with reconnecting pika workers and its QueueScaler applied."""
    pool = SecretPool(env, namespace, name=name, user=user, management_port=management_port)
    pool.create()
    processed = tmp / f"processed-{name}.log"
    runner = runners(
        namespace, f"app={name}", reconnecting_worker,
        pika_worker_env(user.amqp_url(), pool.queue, processed, work_seconds=work_seconds),
        tmp / f"workers-{name}",
    )
    pool.apply_scaler(**spec)
    return Run(pool, runner, processed)


# -- what the operator said -----------------------------------------------------------------

SCALE_MESSAGE = re.compile(r"scaled \S+ (?P<target>\S+) from (?P<old>\d+) to (?P<new>\d+)")


@dataclass(frozen=True)
class ScaleEvent:
    at: float
    reason: str
    old: int
    new: int
    count: int


def event_time(event: dict[str, Any]) -> float:
    stamp = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
    return parse_time(stamp)


def parse_time(stamp: str | None) -> float:
    assert stamp, "no timestamp"
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def scale_events(pool: Pool, kind: str = "QueueScaler") -> list[ScaleEvent]:
    """The pool's ScaledUp/ScaledDown Events on the QueueScaler (or the target), oldest first."""
    name = pool.name
    found: list[ScaleEvent] = []
    for event in pool.events(kind, name):
        match = SCALE_MESSAGE.search(event.get("message", ""))
        if event.get("reason") in ("ScaledUp", "ScaledDown") and match:
            found.append(ScaleEvent(event_time(event), event["reason"], int(match["old"]),
                                    int(match["new"]), int(event.get("count") or 1)))
    return sorted(found, key=lambda e: (e.at, e.old))


def warning_reasons(pool: Pool) -> set[str]:
    return {e.get("reason", "") for e in pool.events() if e.get("type") == "Warning"}


def condition(pool: Pool, kind: str) -> tuple[str, str] | None:
    found = pool.condition(kind)
    return (found["status"], found["reason"]) if found else None


# -- scans ----------------------------------------------------------------------------------

_namespaced_kinds: list[str] = []


def _kinds(env: TestEnv) -> list[str]:
    if not _namespaced_kinds:
        out = env.kubectl("api-resources", "--namespaced=true", "--verbs=list", "-o", "name")
        _namespaced_kinds.extend(k for k in out.stdout.split() if k)
    return _namespaced_kinds


def all_annotations(env: TestEnv, namespace: str) -> str:
    """Every annotation of every resource in `namespace` (and of the namespace), as JSON text."""
    out = env.kubectl("get", ",".join(_kinds(env)), "-n", namespace, "-o", "json",
                      "--ignore-not-found", check=False)
    items = json.loads(out.stdout or '{"items": []}').get("items", [])
    ns = json.loads(env.kubectl("get", "namespace", namespace, "-o", "json").stdout)
    found = {
        f"{item.get('kind')}/{item['metadata'].get('name')}":
            item["metadata"].get("annotations") or {}
        for item in [*items, ns]
    }
    return json.dumps(found)


def leaks(
    env: TestEnv, user: BrokerUser, namespaces: Iterable[str],
    operators: Iterable[OperatorProcess],
) -> tuple[list[str], int]:
    """Where the password shows up: operator logs and /metrics, every Event and QueueScaler
    (status included) in the cluster, and every annotation in `namespaces`.

    Returns the findings and the number of places scanned.
    """
    places: dict[str, str] = {}
    for index, process in enumerate(operators):
        places[f"operator {index} log"] = process.log()
        if process.process is not None and process.process.poll() is None:
            places[f"operator {index} /metrics"] = process.metrics()
    places["events"] = env.kubectl("get", "events", "-A", "-o", "json").stdout
    places["queuescalers"] = env.kubectl("get", "queuescalers", "-A", "-o", "json").stdout
    for namespace in namespaces:
        places[f"annotations in {namespace}"] = all_annotations(env, namespace)
    forms = user.forms()
    findings = [f"{form!r} in {place}" for place, text in places.items()
                for form in forms if form in text]
    return findings, len(places)


def tracebacks(text: str) -> list[str]:
    """Log lines that carry a Python traceback (the JSON log puts it in the line)."""
    return [line[:400] for line in text.splitlines() if "Traceback (most recent call last)" in line]


def record(scenario: str, **numbers: Any) -> None:
    """Append this scenario's measured numbers to the latest run's results."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as out:
        out.write(json.dumps({"scenario": scenario, "at": time.time(), **numbers}) + "\n")


def describe(pool: Pool) -> str:
    """The pool's status and Events in a few lines, for failure messages."""
    try:
        status = pool.status()
        conditions = [(c["type"], c["status"], c["reason"]) for c in status.get("conditions", [])]
        events = [(e.get("lastTimestamp"), e.get("reason"), e.get("message", "")[:120])
                  for e in pool.events()][-12:]
        return (f"\n{pool.name}: replicas={pool.replicas()} decision={status.get('lastDecision')}"
                f" lastScaleTime={status.get('lastScaleTime')} conditions={conditions}"
                f" events={events}")
    except AssertionError as error:
        return f"\n{pool.name}: could not describe ({error})"
