"""Reaction time: a burst published to a pool at rest, until its replica count grows.

    python bench/reaction.py [--bursts 20] [--sizes 0,1,5] [--tick-seconds 1.0]

For each pool size (0: minReplicas 0, at zero; 1 and 5: minReplicas 1 and 5, sitting there
with an idle queue), `--bursts` pools (each a Deployment, a QueueScaler at its default 15 s
polling interval, messagesPerReplica 10, maxReplicas 20, and a queue) on the local
cluster and broker, one real operator process for all of them. Each pool gets one burst,
in a shuffled order across sizes, 0.5 to 1 s apart; a burst calls for more replicas than
the pool has beyond its tolerance (at 5: more than 5 x 10 x 1.1 messages). The clock starts
when the broker has confirmed the burst's last message and stops when a watch on the
Deployments sees that pool's replica count go above where it was (the patch, observed
from outside the operator). Run once with the AMQP fast path on and once with it off
(`--no-fast-path`: management API only). Prints one Markdown table (p50, p95, max and
bursts by pool size and fast path), then where the time went (burst confirmed -> the
operator's "scaled" log line -> the watch). About 2 minutes; loopback only; everything
created is deleted at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pika
from kubernetes import client, config, watch

from queuescaler_testkit.env import TestEnv, bring_up, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.status import condition_of

MESSAGES_PER_REPLICA = 10
TOLERANCE = 0.1
"""The spec's default behavior.tolerance: a burst must call for more than size x (1 + this)."""
MAX_REPLICAS = 20
MIN_BURST = 50
SETTLE_TIMEOUT = 120.0
REACT_TIMEOUT = 60.0
"""How long after the last burst the run waits for the slowest pool (fast path off: a
15 s interval plus the management API's statistics lag)."""


def burst_for(size: int) -> int:
    """Messages in one burst to a pool of `size` replicas: at least MIN_BURST, and twice what
    the pool's replicas are sized for (100 at 5, so 10 replicas wanted)."""
    burst = max(MIN_BURST, 2 * size * MESSAGES_PER_REPLICA)
    wanted = math.ceil(burst / MESSAGES_PER_REPLICA)
    assert wanted > size and wanted - size > TOLERANCE * size, (size, burst)
    return burst


@dataclass
class Pool:
    name: str
    size: int
    queue: str
    confirmed: float | None = None
    """time.monotonic() at the broker's confirm of the burst's last message."""
    confirmed_wall: float | None = None
    grew: float | None = None
    """time.monotonic() when the watch saw spec.replicas above `size`."""


@dataclass
class Outcome:
    reaction: dict[int, list[float]] = field(default_factory=dict)
    """Seconds from confirm to the watch, by pool size."""
    missed: dict[int, int] = field(default_factory=dict)
    """Bursts with no growth seen within REACT_TIMEOUT, by pool size."""
    decided: dict[int, list[float]] = field(default_factory=dict)
    """Seconds from confirm to the operator's "scaled" log line, by pool size."""
    log: Path | None = None
    bursts: list[tuple[str, int, float, float | None, float | None]] = field(
        default_factory=list)
    """(pool, size, confirmed, scaled log line, watch), wall-clock seconds (the watch's
    converted from the monotonic clock), for the CSV."""


def _create(env: TestEnv, api: client.ApiClient, namespace: str, pools: list[Pool]) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "rabbitmq"},
        "stringData": {"amqpUrl": env.amqp_url, "managementUrl": env.management_url},
    })
    connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
    channel = connection.channel()
    for pool in pools:
        channel.queue_declare(pool.queue, durable=True)
    connection.close()
    for pool in pools:
        apps.create_namespaced_deployment(namespace, {
            "metadata": {"name": pool.name},
            "spec": {"replicas": pool.size, "selector": {"matchLabels": {"app": pool.name}},
                     "template": {"metadata": {"labels": {"app": pool.name}},
                                  "spec": {"containers": [{"name": "w", "image": "w:fake"}]}}},
        })
        custom.create_namespaced_custom_object("queuescaler.io", "v1alpha1", namespace,
                                               "queuescalers", {
            "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
            "metadata": {"name": pool.name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": pool.name},
                     "minReplicas": pool.size, "maxReplicas": MAX_REPLICAS,
                     "target": {"messagesPerReplica": MESSAGES_PER_REPLICA},
                     "source": {"rabbitmq": {"queue": pool.queue, "vhost": env.vhost,
                                             "connectionSecretRef": {"name": "rabbitmq"}}}},
        })


def _at_rest(api: client.ApiClient, namespace: str, pools: list[Pool]) -> bool:
    """Every QueueScaler sampled (statistics out) and decided to stay at its size."""
    sizes = {pool.name: pool.size for pool in pools}
    items = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "queuescaler.io", "v1alpha1", namespace, "queuescalers")["items"]
    settled = 0
    for item in items:
        status = item.get("status") or {}
        ready = condition_of(item, "Ready") or {}
        pending = "not out yet" in ready.get("message", "")
        if (status.get("lastSampleTime") and status.get("lastDecision")
                and status.get("desiredReplicas") == sizes[item["metadata"]["name"]]
                and ready.get("status") == "True" and not pending):
            settled += 1
    return settled == len(pools)


def _scaled_at(log: Path, namespace: str) -> dict[str, float]:
    """Wall time of each pool's first "scaled Deployment" line in the operator's JSON log."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = str(entry.get("message", ""))
        prefix = f"{namespace}/"
        if message.startswith(prefix) and " scaled Deployment " in message:
            name = message[len(prefix):].split(" ", 1)[0]
            at = datetime.datetime.fromisoformat(entry["timestamp"]).timestamp()
            found.setdefault(name, at)
    return found


def run(
    env: TestEnv, fast_path: bool, sizes: list[int], bursts: int, out: Path,
    operator_args: tuple[str, ...] = (),
) -> Outcome:
    api = config.new_client_from_config(config_file=str(env.kubeconfig))
    namespace = f"reaction-{uuid.uuid4().hex[:6]}"
    pools = [Pool(f"s{size}-w{i}", size, f"{namespace}-s{size}-q{i}")
             for size in sizes for i in range(bursts)]
    by_name = {pool.name: pool for pool in pools}
    flag = "--fast-path" if fast_path else "--no-fast-path"
    log_path = out / f"operator-reaction-{'on' if fast_path else 'off'}.log"
    log_path.write_text("")
    operator: OperatorProcess | None = None
    stop = threading.Event()

    def watch_deployments() -> None:
        apps = client.AppsV1Api(config.new_client_from_config(config_file=str(env.kubeconfig)))
        while not stop.is_set():
            stream = watch.Watch()
            for event in stream.stream(apps.list_namespaced_deployment, namespace,
                                       timeout_seconds=5):
                deployment = event["object"]
                pool = by_name.get(deployment.metadata.name)
                if pool is not None and pool.grew is None \
                        and (deployment.spec.replicas or 0) > pool.size:
                    pool.grew = time.monotonic()

    watcher = threading.Thread(target=watch_deployments, daemon=True)
    try:
        _create(env, api, namespace, pools)
        operator = OperatorProcess(env, log_path, flag, "-n", namespace, *operator_args).start()
        wait_until(lambda: _at_rest(api, namespace, pools), timeout=SETTLE_TIMEOUT,
                   what="every pool sampled and at rest at its size", every=1)
        watcher.start()
        connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
        channel = connection.channel()
        channel.confirm_delivery()
        rng = random.Random(7)
        order = list(pools)
        rng.shuffle(order)
        for pool in order:
            body = b"x"
            for _ in range(burst_for(pool.size)):
                channel.basic_publish("", pool.queue, body,
                                      pika.BasicProperties(delivery_mode=2), mandatory=True)
            pool.confirmed = time.monotonic()
            pool.confirmed_wall = time.time()
            connection.sleep(rng.uniform(0.5, 1.0))
        connection.close()
        deadline = time.monotonic() + REACT_TIMEOUT
        while time.monotonic() < deadline and any(p.grew is None for p in pools):
            time.sleep(0.5)
        outcome = Outcome(log=log_path)
        scaled = _scaled_at(log_path, namespace)
        for pool in pools:
            assert pool.confirmed is not None and pool.confirmed_wall is not None
            seen_wall = (None if pool.grew is None
                         else pool.confirmed_wall + pool.grew - pool.confirmed)
            outcome.bursts.append(
                (pool.name, pool.size, pool.confirmed_wall, scaled.get(pool.name), seen_wall))
            if pool.grew is None:
                outcome.missed[pool.size] = outcome.missed.get(pool.size, 0) + 1
                continue
            outcome.reaction.setdefault(pool.size, []).append(pool.grew - pool.confirmed)
            if pool.name in scaled:
                outcome.decided.setdefault(pool.size, []).append(
                    scaled[pool.name] - pool.confirmed_wall)
        return outcome
    finally:
        stop.set()
        if operator is not None:
            operator.stop()
        client.CoreV1Api(api).delete_namespace(namespace)
        connection = pika.BlockingConnection(pika.URLParameters(env.amqp_url))
        channel = connection.channel()
        for pool in pools:
            channel.queue_delete(pool.queue)
        connection.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _cells(values: list[float]) -> str:
    if not values:
        return "- | - | -"
    return (f"{percentile(values, 0.5):.2f} | {percentile(values, 0.95):.2f} | "
            f"{max(values):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--bursts", type=int, default=20, help="pools (one burst each) per size")
    parser.add_argument("--sizes", default="0,1,5", help="pool sizes (their minReplicas)")
    parser.add_argument("--tick-seconds", type=float, default=None,
                        help="the operator's --tick-seconds (default: the operator's, 1 s)")
    args = parser.parse_args()
    operator_args = () if args.tick_seconds is None else ("--tick-seconds", f"{args.tick_seconds}")
    sizes = [int(size) for size in args.sizes.split(",")]
    started = time.monotonic()
    env = bring_up()
    env.apply_crd()
    out = Path.home() / ".cache" / "queuescaler" / "out"
    out.mkdir(parents=True, exist_ok=True)
    outcomes = {fast_path: run(env, fast_path, sizes, args.bursts, out, operator_args)
                for fast_path in (True, False)}
    print("| pool size (minReplicas) | burst (messages) | AMQP fast path | p50 (s) | p95 (s) "
          "| max (s) | bursts |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for size in sizes:
        for fast_path in (True, False):
            outcome = outcomes[fast_path]
            times = outcome.reaction.get(size, [])
            missed = outcome.missed.get(size, 0)
            seen = f"{len(times)}" + (f" ({missed} not within {REACT_TIMEOUT:.0f} s)"
                                      if missed else "")
            print(f"| {size} | {burst_for(size)} | {'on' if fast_path else 'off'} | "
                  f"{_cells(times)} | {seen} |")
    print()
    print("Where the time went (medians, s): burst confirmed -> the operator's `scaled` log "
          "line -> the watch sees the Deployment grow")
    print()
    print("| pool size | AMQP fast path | confirmed -> scaled (log) | scaled (log) -> watch |")
    print("|---:|---|---:|---:|")
    for size in sizes:
        for fast_path in (True, False):
            outcome = outcomes[fast_path]
            decided = outcome.decided.get(size, [])
            total = outcome.reaction.get(size, [])
            if decided and total:
                to_log = statistics.median(decided)
                rest = statistics.median(total) - to_log
                print(f"| {size} | {'on' if fast_path else 'off'} | {to_log:.2f} | {rest:.2f} |")
    bursts_csv = out / "reaction-bursts.csv"
    with bursts_csv.open("w") as csv:
        csv.write("fast_path,pool,size,confirmed,scaled_log,watch\n")
        for fast_path, outcome in outcomes.items():
            for name, size, confirmed, scaled, watched in outcome.bursts:
                cells = ["" if v is None else f"{v:.3f}" for v in (confirmed, scaled, watched)]
                csv.write(f"{'on' if fast_path else 'off'},{name},{size},{','.join(cells)}\n")
    print(f"\n(bench ran in {time.monotonic() - started:.0f} s; each burst: {bursts_csv}; "
          f"operator logs: {', '.join(str(o.log) for o in outcomes.values())})")


if __name__ == "__main__":
    main()
